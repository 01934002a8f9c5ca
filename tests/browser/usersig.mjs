// Tencent's own tls-sig-api-v2 package (npm) against livegate's userSigs, both directions.
//   node usersig.mjs gen SDKAPPID KEY USER EXPIRE_SECS [ROOM PRIVILEGES]   -> prints a userSig (privateMapKey)
//   node usersig.mjs verify SDKAPPID KEY USER SIG                          -> prints JSON, exit 1 if it fails
// The package only makes signatures; "verify" decodes the document as the package encodes it and recomputes
// TLS.sig with the package's own HMAC routine (Api.prototype._hmacsha256).
import { createRequire } from "node:module";
import zlib from "node:zlib";
const require = createRequire(import.meta.url);
const { Api } = require("tls-sig-api-v2");

const [cmd, appId, key, user, arg4, room, priv] = process.argv.slice(2);
const api = new Api(Number(appId), key);
if (cmd === "gen") {
  if (room === undefined) {
    console.log(api.genUserSig(user, Number(arg4)));
  } else if (/^\d+$/.test(room)) {
    console.log(api.genPrivateMapKey(user, Number(arg4), Number(room), Number(priv)));
  } else {
    console.log(api.genPrivateMapKeyWithStringRoomID(user, Number(arg4), room, Number(priv)));
  }
} else if (cmd === "verify") {
  const b64 = arg4.replace(/\*/g, "+").replace(/-/g, "/").replace(/_/g, "=");
  const doc = JSON.parse(zlib.inflateSync(Buffer.from(b64, "base64")).toString());
  const sig = api._hmacsha256(doc["TLS.identifier"], doc["TLS.time"], doc["TLS.expire"], doc["TLS.userbuf"] ?? null);
  const out = { ok: sig === doc["TLS.sig"] && doc["TLS.identifier"] === user && doc["TLS.sdkappid"] === Number(appId), doc };
  if (doc["TLS.userbuf"]) {
    const b = Buffer.from(doc["TLS.userbuf"], "base64");
    const ulen = b.readUInt16BE(1);
    out.userbuf = {
      ver: b[0],
      user: b.subarray(3, 3 + ulen).toString(),
      sdkappid: b.readUInt32BE(3 + ulen),
      roomnum: b.readUInt32BE(7 + ulen),
      expire: b.readUInt32BE(11 + ulen),
      privileges: b.readUInt32BE(15 + ulen),
      roomstr: b[0] === 1 ? b.subarray(25 + ulen, 25 + ulen + b.readUInt16BE(23 + ulen)).toString() : null,
    };
  }
  console.log(JSON.stringify(out));
  process.exit(out.ok ? 0 : 1);
}
