//! userSig and privateMapKey interop with Tencent's own `tls-sig-api-v2` npm package (installed with the browser
//! tests' packages by scripts/setup.sh): what the package makes, `livegate usersig --verify` accepts, and what
//! livegate makes, the package's HMAC routine confirms (`tests/browser/usersig.mjs`). Both directions, userSigs
//! and privateMapKeys with numeric and string rooms, and the refusals.

use std::path::Path;
use std::process::{Command, Output};

const APP: &str = "1400000123";
const KEY: &str = "5bd2850fff3ecb11d7c805251c51ee463a25727bddc2385f3fa8bfee1bb93b5e";

fn node(args: &[&str]) -> Output {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/tls-sig-api-v2").exists(),
        "tls-sig-api-v2 is missing: run scripts/setup.sh (npm ci in tests/browser)"
    );
    Command::new("node").current_dir(&dir).arg("usersig.mjs").args(args).output().expect("node")
}

fn package_sig(args: &[&str]) -> String {
    let out = node(&[&["gen", APP, KEY][..], args].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn livegate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_livegate")).arg("usersig").args(args).output().expect("livegate")
}

fn livegate_verify(app: &str, key: &str, user: &str, sig: &str) -> Result<serde_json::Value, String> {
    let out = livegate(&["--sdk-app-id", app, "--key", key, "--user", user, "--verify", sig]);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_vendor_package_and_livegate_accept_each_others_signatures() {
    // Package → livegate.
    let sig = package_sig(&["alice", "86400"]);
    let j = livegate_verify(APP, KEY, "alice", &sig).unwrap();
    assert_eq!((j["identifier"].as_str(), j["expire"].as_i64()), (Some("alice"), Some(86400)), "{j}");
    assert!(j["private_map"].is_null());
    let pmk = package_sig(&["alice", "300", "1234", "42"]);
    let j = livegate_verify(APP, KEY, "alice", &pmk).unwrap();
    assert_eq!(j["private_map"]["room"], 1234, "{j}");
    assert_eq!(j["private_map"]["privileges"], 42, "{j}");
    assert_eq!(j["private_map"]["user"], "alice");
    let pmk = package_sig(&["alice", "300", "class-7", "255"]);
    let j = livegate_verify(APP, KEY, "alice", &pmk).unwrap();
    assert_eq!(j["private_map"]["room"], "class-7", "{j}");

    // livegate → package.
    let out = livegate(&["--sdk-app-id", APP, "--key", KEY, "--user", "bob", "--expire", "1h"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sig = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let v = node(&["verify", APP, KEY, "bob", &sig]);
    assert!(v.status.success(), "the package's HMAC disagrees: {}", String::from_utf8_lossy(&v.stdout));
    let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    assert_eq!(j["doc"]["TLS.expire"], 3600, "{j}");
    for (room, ver) in [("777", 0), ("class-7", 1)] {
        let out = livegate(&["--sdk-app-id", APP, "--key", KEY, "--user", "bob", "--room", room, "--privileges", "18"]);
        let pmk = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let v = node(&["verify", APP, KEY, "bob", &pmk]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
        let j: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
        let u = &j["userbuf"];
        assert_eq!(
            (u["ver"].as_u64(), u["privileges"].as_u64(), u["user"].as_str()),
            (Some(ver), Some(18), Some("bob"))
        );
        assert_eq!(u["sdkappid"].as_u64(), APP.parse().ok(), "{j}");
        if ver == 0 {
            assert_eq!(u["roomnum"], 777);
        } else {
            assert_eq!(u["roomstr"], "class-7");
        }
    }
}

#[test]
fn wrong_app_user_key_or_a_mangled_sig_is_refused_with_the_reason() {
    let sig = package_sig(&["alice", "86400"]);
    let refused = |app: &str, key: &str, user: &str, sig: &str| livegate_verify(app, key, user, sig).unwrap_err();
    assert!(refused("1400000999", KEY, "alice", &sig).contains("sdkAppId 1400000123, not 1400000999"));
    assert!(refused(APP, KEY, "mallory", &sig).contains("not \"mallory\""));
    assert!(refused(APP, "another-key", "alice", &sig).contains("signature does not match"));
    assert!(refused(APP, KEY, "alice", &sig[..sig.len() / 2]).contains("malformed"));
    // Expired: a lifetime of -10 s (the package writes what it is given) ended before it was made.
    let old = package_sig(&["alice", "-10"]);
    assert!(refused(APP, KEY, "alice", &old).contains("expired"));
}
