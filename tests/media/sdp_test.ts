/** SDP rtpmap/fmtp reading (total, split anywhere) and the one-stream writer ffmpeg reads. */
import assert from "node:assert/strict";
import { fmtpParameter, parseRtpmap, parseSdp, rtpmapOf, writeSdp } from "../../lib/media/sdp.ts";

const FFMPEG_OUT = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=No Name\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" +
  "a=tool:libavformat 59.27.100\r\nm=video 5004 RTP/AVP 96\r\nb=AS:256\r\na=rtpmap:96 MP4V-ES/90000\r\n" +
  "a=fmtp:96 profile-level-id=1; config=000001B001000001B5\r\n" +
  "m=audio 5006 RTP/AVP 97\r\na=rtpmap:97 L16/16000/2\r\n";

Deno.test("parseRtpmap reads payload type, encoding, clock rate and channels", () => {
  assert.deepEqual(parseRtpmap("96 H264/90000"), {
    payloadType: 96,
    encoding: "H264",
    clockRate: 90000,
    channels: 1,
  });
  assert.deepEqual(parseRtpmap("97 l16/16000/2"), {
    payloadType: 97,
    encoding: "L16",
    clockRate: 16000,
    channels: 2,
  });
  for (
    const bad of ["", "96", "128 H264/90000", "96 H264/0", "96 H264", "96 H2 64/90000", "96 H264/90000/0"]
  ) {
    assert.equal(parseRtpmap(bad), null, bad);
  }
});

Deno.test("parseSdp reads every media section's rtpmaps and fmtps", () => {
  const sdp = parseSdp(FFMPEG_OUT);
  assert.equal(sdp.address, "127.0.0.1");
  assert.equal(sdp.media.length, 2);
  assert.equal(sdp.media[0].port, 5004);
  assert.deepEqual(sdp.media[0].rtpmaps.get(96), {
    payloadType: 96,
    encoding: "MP4V-ES",
    clockRate: 90000,
    channels: 1,
  });
  assert.equal(fmtpParameter(sdp.media[0].fmtps.get(96)!, "config"), "000001B001000001B5");
  assert.equal(sdp.media[1].rtpmaps.get(97)?.channels, 2);
  assert.equal(rtpmapOf(32)?.encoding, "MPV", "static types need no rtpmap");
});

Deno.test("parseSdp never throws on any prefix of a description", () => {
  for (let i = 0; i <= FFMPEG_OUT.length; i++) {
    const sdp = parseSdp(FFMPEG_OUT.slice(0, i));
    assert.ok(sdp.media.length <= 2);
  }
  assert.deepEqual(parseSdp("\u0000garbage\nm=\na=rtpmap:x").media, []);
});

Deno.test("writeSdp writes a description ffmpeg reads and refuses text that could add lines", () => {
  const text = writeSdp({
    kind: "video",
    address: "127.0.0.1",
    port: 40000,
    payloadType: 96,
    rtpmap: { encoding: "H264", clockRate: 90000, channels: 1 },
    fmtp: "packetization-mode=1",
  });
  const back = parseSdp(text);
  assert.equal(back.media[0].port, 40000);
  assert.equal(back.media[0].rtpmaps.get(96)?.encoding, "H264");
  assert.equal(back.media[0].fmtps.get(96), "packetization-mode=1");
  assert.throws(
    () => writeSdp({ kind: "video", address: "127.0.0.1", port: 40000, payloadType: 96 }),
    RangeError,
  );
  assert.throws(
    () => writeSdp({ kind: "video", address: "127.0.0.1", port: 40000, payloadType: 32, fmtp: "a\r\na=x" }),
    RangeError,
  );
  assert.throws(
    () => writeSdp({ kind: "video", address: "evil host", port: 1, payloadType: 32 }),
    RangeError,
  );
});
