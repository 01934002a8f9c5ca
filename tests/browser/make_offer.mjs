#!/usr/bin/env node
// Prints a real Chromium SDP offer and exits, so tests can send offers that are valid but never followed by
// ICE (the peer is gone when the answer arrives).
// usage: node tests/browser/make_offer.mjs [recvonly|sendonly]   (recvonly: a WHEP offer; sendonly: WHIP,
// with the fake camera and microphone)
import { launchChromium, startStaticServer } from './lib.mjs';

const direction = process.argv[2] || 'recvonly';
const browser = await launchChromium();
// getUserMedia needs a secure context: http://127.0.0.1 is one, about:blank is not.
const { server } = await startStaticServer({ '/': { body: '<!doctype html><title>offer</title>' } });
try {
  await browser.page.goto(`http://127.0.0.1:${server.address().port}/`);
  const sdp = await browser.page.evaluate(async (direction) => {
    const pc = new RTCPeerConnection();
    if (direction === 'sendonly') {
      const media = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
      for (const t of media.getTracks()) pc.addTransceiver(t, { direction: 'sendonly' });
    } else {
      pc.addTransceiver('video', { direction: 'recvonly' });
      pc.addTransceiver('audio', { direction: 'recvonly' });
    }
    const o = await pc.createOffer();
    return o.sdp;
  }, direction);
  process.stdout.write(sdp);
} finally {
  await browser.close();
  server.close();
}
