#!/usr/bin/env node
// Prints a real Chromium recvonly (video + audio) SDP offer and exits, so tests can send offers that are
// valid but never followed by ICE (the peer is gone when the answer arrives).
import { launchChromium } from './lib.mjs';

const browser = await launchChromium();
try {
  const sdp = await browser.page.evaluate(async () => {
    const pc = new RTCPeerConnection();
    pc.addTransceiver('video', { direction: 'recvonly' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    const o = await pc.createOffer();
    return o.sdp;
  });
  process.stdout.write(sdp);
} finally {
  await browser.close();
}
