/**
 * Central Dispatch's streaming case end to end, with real peers on loopback: VLC serves a clip over RTSP behind a
 * scheduler service, and ffprobe plays it through the service's VIP with RTP over UDP. The RTSP control connection
 * (DESCRIBE, SETUP, PLAY, TEARDOWN) goes through edgenode and stays open while the media plays; the media goes from
 * VLC straight to ffprobe's UDP ports, so the scheduler carries a few KB while the client receives tens of times
 * more.
 *
 * Needs the Debian packages vlc-bin, vlc-plugin-base and ffmpeg (.ci/run installs them); without them the test fails
 * and says so, unless EDGENODE_SKIP_STREAMING=1 is set. VLC refuses to run as root, so as root it runs as `nobody`
 * through util-linux's `setpriv`.
 */
import assert from "node:assert/strict";
import { type Child, startChild, tail } from "./_child.ts";
import { requireTools } from "../_support/tools.ts";
import { until, within } from "../_support/until.ts";
import { getJson, LISTENING, startEdgenode, tempConfig } from "./_process.ts";

const SKIP_ENV = "EDGENODE_SKIP_STREAMING";
const LOOPBACK = "127.0.0.1";
/** Who VLC runs as when the test runs as root. */
const NOBODY = 65534;
/** Media seconds the client plays; short enough for the whole test to stay well under 30 s. */
const PLAY_SECONDS = 3;
const VLC_READY_MS = 10_000;
const CLIENT_TIMEOUT_MS = 20_000;
const TOOL_TIMEOUT_MS = 15_000;

interface ServerStatus {
  server: string;
  state: string;
  active: number;
  total: number;
  failed_connects: number;
  last_check: { ok: boolean } | null;
}

interface ServiceStatus {
  open_connections: number;
  accepted: number;
  no_server: number;
  bytes_in: number;
  bytes_out: number;
  servers: ServerStatus[];
}

interface Probe {
  streams: { index: number; codec_type: string; codec_name: string }[];
  frames: { media_type: string; pkt_size: string }[];
}

Deno.test({
  name:
    "scheduler carries an RTSP client's control to VLC while the RTP media reaches the client over UDP directly",
  ignore: Deno.env.get(SKIP_ENV) === "1",
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "edgenode_streaming_" });
    try {
      // Root or not, from the owner of what this process just made (Deno.uid() would need --allow-sys).
      const asRoot = (await Deno.stat(dir)).uid === 0;
      await requireTools(
        "the streaming test",
        ["ffmpeg", "ffprobe", "cvlc", ...(asRoot ? ["setpriv"] : [])],
        "the Debian packages vlc-bin vlc-plugin-base ffmpeg (.ci/run does; setpriv comes with util-linux), " +
          `or set ${SKIP_ENV}=1 to skip this test`,
      );
      // VLC (as nobody) must reach the clip; its HOME takes the config and cache it writes.
      await Deno.chmod(dir, 0o755);
      const clip = `${dir}/clip.ts`;
      await makeClip(clip);
      const home = `${dir}/vlc-home`;
      await Deno.mkdir(home);
      if (asRoot) await Deno.chown(home, NOBODY, NOBODY);

      const vlcPort = freeTcpPort();
      await using vlc = startChild("VLC", [
        ...(asRoot ? ["setpriv", `--reuid=${NOBODY}`, `--regid=${NOBODY}`, "--clear-groups", "--"] : []),
        "cvlc",
        clip,
        "--loop",
        "--sout",
        `#rtp{sdp=rtsp://${LOOPBACK}:${vlcPort}/stream}`,
      ], { HOME: home });
      await waitForTcp(vlc, vlcPort, VLC_READY_MS);

      await using config = await tempConfig([
        "roles: [scheduler]",
        "scheduler:",
        "  services:",
        "    - name: rtsp",
        `      listen: ${LOOPBACK}:0`,
        "      picker: leastconn",
        `      servers: [{ address: "${LOOPBACK}:${vlcPort}" }]`,
        "      check: { interval: 500ms }",
        "",
      ].join("\n"));
      await using edgenode = startEdgenode(["--config", config.path, "--status", `${LOOPBACK}:0`]);
      const [, vipPort] = await edgenode.waitForLine(
        /msg="service listening" service=rtsp listen=127\.0\.0\.1:(\d+)/,
      );
      const [, statusPort] = await edgenode.waitForLine(LISTENING);
      const service = () => serviceStatus(Number(statusPort));
      // The first health check has reached VLC: the scheduler sees the server as a live one, not just by default.
      await until("a good check", async () => (await service()).servers[0].last_check?.ok === true, 5_000);

      // The client, through the VIP, with RTP over UDP only (no fallback to RTP interleaved in the RTSP connection).
      await using client = startChild("ffprobe", [
        "ffprobe",
        "-v",
        "trace",
        "-rtsp_transport",
        "udp",
        "-read_intervals",
        `%+${PLAY_SECONDS}`,
        "-show_entries",
        "stream=index,codec_type,codec_name:frame=media_type,pkt_size",
        "-of",
        "json",
        `rtsp://${LOOPBACK}:${vipPort}/stream`,
      ]);
      // While the media plays, the control connection is held open through the scheduler.
      let activeWhilePlaying = 0;
      const exit = client.exit(CLIENT_TIMEOUT_MS);
      let playing = true;
      exit.finally(() => playing = false).catch(() => {});
      while (playing) {
        const s = await service();
        activeWhilePlaying = Math.max(activeWhilePlaying, s.servers[0].active);
        await within(exit, 100);
      }
      const result = await exit;
      assert.equal(result.code, 0, `ffprobe failed:\n${tail(result.stderr)}`);
      assert.equal(
        activeWhilePlaying,
        1,
        "the RTSP connection was open through the scheduler during playback",
      );

      // What the client received: both streams with their codecs, and decoded frames of each.
      const probe = JSON.parse(result.stdout) as Probe;
      assert.deepEqual(
        probe.streams.map((s) => `${s.codec_type}/${s.codec_name}`).sort(),
        ["audio/mp2", "video/mpeg2video"],
      );
      const videoFrames = probe.frames.filter((f) => f.media_type === "video").length;
      const audioFrames = probe.frames.filter((f) => f.media_type === "audio").length;
      const mediaBytes = probe.frames.reduce((n, f) => n + Number(f.pkt_size), 0);
      // 25 frames/s of video and ~42 mp2 frames/s of audio; decoding starts at the first whole GOP.
      assert.ok(videoFrames >= 25, `video frames decoded: ${videoFrames}`);
      assert.ok(audioFrames >= 25, `audio frames decoded: ${audioFrames}`);

      // The client's own account: one TCP connection, to the VIP, and every stream set up as unicast RTP over UDP.
      // VLC's SDP names VLC's own address as the control URL (a proxy is not a connection hop: VLC sees its real
      // address, not the VIP); a client must keep using the connection it has, which ffprobe does.
      const connects = [
        ...result.stderr.matchAll(/\[tcp @ [^\]]+\] Successfully connected to (\S+) port (\d+)/g),
      ]
        .map((m) => `${m[1]}:${m[2]}`);
      assert.deepEqual(connects, [`${LOOPBACK}:${vipPort}`], "ffprobe's TCP connections");
      const transports = [...result.stderr.matchAll(/line='Transport: ([^']+)'/g)].map((m) => m[1]);
      assert.equal(transports.length, 2, `SETUP replies:\n${transports.join("\n")}`);
      for (const t of transports) {
        assert.match(t, /^RTP\/AVP(\/UDP)?;unicast;client_port=\d+-\d+;server_port=\d+-\d+/);
        assert.doesNotMatch(t, /interleaved/);
      }

      // The scheduler's account, once the connection has finished (its bytes are counted then).
      await until("the RTSP connection to finish", async () => {
        const s = await service();
        return s.open_connections === 0 && s.servers[0].active === 0 && s.bytes_out > 0;
      }, 5_000);
      const s = await service();
      assert.equal(s.accepted, 1);
      assert.deepEqual(
        { total: s.servers[0].total, failed: s.servers[0].failed_connects, no_server: s.no_server },
        { total: 1, failed: 0, no_server: 0 },
      );
      const controlBytes = s.bytes_in + s.bytes_out;
      assert.ok(s.bytes_in > 0 && s.bytes_out > 0, "RTSP requests and replies went through the scheduler");
      assert.ok(controlBytes < 16 * 1024, `bytes through the scheduler: ${controlBytes}`);
      assert.ok(
        mediaBytes > 20 * controlBytes,
        `media the client received (${mediaBytes} B) must dwarf the RTSP through the scheduler (${controlBytes} B)`,
      );
      console.log(
        `streaming: ${videoFrames} video + ${audioFrames} audio frames, ${mediaBytes} B of media over UDP; ` +
          `${s.bytes_in} B in + ${s.bytes_out} B out through the scheduler (ratio ${
            (mediaBytes / controlBytes).toFixed(0)
          }x)`,
      );

      edgenode.kill("SIGTERM");
      const stopped = await edgenode.waitForExit();
      assert.equal(stopped.code, 0, stopped.stderr);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** A 10 s MPEG-TS clip (test pattern, 440 Hz tone); VLC loops it, so the client may join at any time. */
async function makeClip(path: string): Promise<void> {
  await using ffmpeg = startChild("ffmpeg", [
    "ffmpeg",
    "-nostdin",
    "-hide_banner",
    "-loglevel",
    "error",
    "-f",
    "lavfi",
    "-i",
    "testsrc=size=320x240:rate=25",
    "-f",
    "lavfi",
    "-i",
    "sine=frequency=440:sample_rate=48000",
    "-t",
    "10",
    "-c:v",
    "mpeg2video",
    "-q:v",
    "2",
    "-g",
    "12",
    "-c:a",
    "mp2",
    "-b:a",
    "128k",
    path,
  ]);
  const result = await ffmpeg.exit(TOOL_TIMEOUT_MS);
  assert.equal(result.code, 0, `ffmpeg could not make the clip:\n${tail(result.stderr)}`);
  await Deno.chmod(path, 0o644);
}

/** A port free on loopback now; VLC binds it a moment later (if another process took it, VLC's wait fails). */
function freeTcpPort(): number {
  const listener = Deno.listen({ hostname: LOOPBACK, port: 0, transport: "tcp" });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Waits until `port` accepts a TCP connection; fails at once if `child` (the server) has ended. */
async function waitForTcp(child: Child, port: number, timeoutMs: number): Promise<void> {
  await until(
    `${child.label} to answer on ${LOOPBACK}:${port}`,
    async () => {
      if (child.exited) {
        throw new Error(
          `${child.label} ended before port ${port} answered; stderr:\n${tail(await child.stderr())}`,
        );
      }
      try {
        (await Deno.connect({ hostname: LOOPBACK, port })).close();
        return true;
      } catch {
        return false;
      }
    },
    timeoutMs,
    100,
  );
}

async function serviceStatus(statusPort: number): Promise<ServiceStatus> {
  const status = await getJson(`http://${LOOPBACK}:${statusPort}/status`);
  return (status.roles as { scheduler: { services: Record<string, ServiceStatus> } }).scheduler.services.rtsp;
}
