/**
 * The seed report's lecture on one node with real ffmpeg (tests/e2e/_presentation.ts): the complete Appendix A
 * program runs as written, both twinstreams reach their reflector's participant in sync while the camera's video is
 * 1 s late, the transcoder's ffmpeg is killed mid-run and restarted without the high-quality twinstream noticing,
 * and the saved low-quality video decodes with ffprobe as MPEG-4 Part 2 at a quarter of the camera's size.
 *
 * Needs the Debian packages ffmpeg and fonts-dejavu-core (`make test` installs them); without them it fails naming
 * them.
 */
import assert from "node:assert/strict";
import type { RtpGroupReport, RtpReport } from "../../lib/probe/rtp_streams.ts";
import {
  CNAME,
  extractSaved,
  ffprobeStreams,
  type ParticipantReport,
  runPresentation,
} from "./_presentation.ts";

/** Long enough for about 340 timed frames per twinstream (at least 250 asserted): at p99, three may be off. */
const SECONDS = 20;
const KILL_AT = 8;
/**
 * Captured together, delivered together: the 1 ms at the 99th percentile, asserted at real-time priority
 * (as root, as CI runs). Measured here on a 2-core machine that also runs the camera, the microphone, the
 * transcoder and two participants (all niced; participants time arrivals by the kernel's clock): before the syncer
 * held its thread for the last 0.5 ms before each release (its `hold`), p99 0.6-1.5 ms; with it, 16 runs of
 * 2026-12-05 gave 0.16-0.95 ms for both twinstreams and 8 more 0.14-0.76 ms (median 0.01-0.07 ms). A p99 over
 * ~340 frames lets a stall of the virtual CPU (seen here as 3-15 ms system calls) spoil two or three frames
 * without failing the build; more than that is a failure. At normal priority (not root) the bound is 25 ms (p99
 * 1.4-8.9 ms measured before the hold), below what a viewer notices (ITU-R BT.1359: 45 ms). The figures are
 * printed for every run.
 */
const SKEW_P50_US = 1000;
/** As root (CI) the node runs at a real-time priority, as an appliance built for the syncer's 1 ms would. */
const REALTIME_PRIORITY = Deno.uid() === 0 ? 10 : undefined;
const SKEW_P99_US = REALTIME_PRIORITY ? 1000 : 25_000;

function lecture(report: ParticipantReport, label: string): RtpGroupReport {
  const rtp = report.rtp as RtpReport | undefined;
  assert.ok(rtp, `${label}: the participant saw no RTP: ${JSON.stringify(report)}`);
  const group = rtp.groups.find((g) => g.cname === CNAME);
  assert.ok(group, `${label}: no streams of CNAME ${CNAME}: ${JSON.stringify(rtp.groups)}`);
  return group;
}

Deno.test({
  name:
    "node runs the report's Appendix A lecture with real ffmpeg: twinstreams in sync, transcoder restarted",

  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "edgenode_presentation_" });
    try {
      const run = await runPresentation({
        seconds: SECONDS,
        dataDir: dir,
        killTranscoderAt: KILL_AT,
        realtimePriority: REALTIME_PRIORITY,
      });
      // The node's side of the timing, printed for whoever reads a failure: how late the syncers released.
      for (const name of ["Sync_high", "Sync_low"]) {
        const sync = (run.session.aps as Record<string, unknown>[]).find((a) => a.name === name)!
          .syncer as Record<string, unknown>;
        const inputs = (sync.inputs as Record<string, unknown>[]).map((i) => ({
          late: i.late,
          lateness_ms: i.lateness_ms,
        }));
        console.log(
          `${name}: D ${sync.delay_ms} ms, released late ${sync.release_late} (worst ${sync.release_error_max_ms} ms), held ${sync.held_ms} ms, inputs ${
            JSON.stringify(inputs)
          }`,
        );
      }

      // Both twinstreams: one video and one audio stream of the lecture, in sync within the bound.
      for (const [label, report] of [["high", run.high], ["low", run.low]] as const) {
        const group = lecture(report, label);
        const payloads = group.streams.map((s) => s.payload_type).sort();
        assert.equal(group.streams.length, 2, `${label}: ${JSON.stringify(group.streams)}`);
        assert.ok(payloads.includes(label === "high" ? 32 : 96), `${label}: payload types ${payloads}`);
        for (const s of group.streams) assert.ok(s.packets > 100, `${label}: ${JSON.stringify(s)}`);
        assert.equal(group.skew.length, 1, `${label}: ${JSON.stringify(group.skew)}`);
        const [skew] = group.skew;
        assert.ok(skew.samples >= 250, `${label}: ${JSON.stringify(skew)}`);
        const text = `${label} A/V skew: ${JSON.stringify(skew)}`;
        console.log(text);
        assert.ok(skew.abs_us && skew.abs_us.p50 <= SKEW_P50_US, text);
        assert.ok(skew.abs_us.p99 <= SKEW_P99_US, text);
      }

      // The high-quality twinstream did not notice the transcoder's restart: nothing lost.
      for (const s of lecture(run.high, "high").streams) {
        assert.equal(s.lost, 0, `high: ${JSON.stringify(s)}`);
      }
      assert.equal(run.transcoderPids.length, 2);
      assert.notEqual(run.transcoderPids[0], run.transcoderPids[1]);
      const aps = run.session.aps as Record<string, unknown>[];
      const transcode = aps.find((a) => a.name === "Transcode")!.transcoder as {
        state: string;
        ffmpeg: { restarts: number };
      };
      assert.ok(transcode.ffmpeg.restarts >= 1, JSON.stringify(transcode));
      assert.equal(transcode.state, "running", JSON.stringify(transcode));
      // Sync_high waits out the camera. The camera's lateness, as its sender reports state it against arrival, is
      // the 1 s it is told give or take ffmpeg's pacing (973 ms in one CI run), and D covers the latest input.
      const syncHigh = aps.find((a) => a.name === "Sync_high")!.syncer as {
        delay_ms: number;
        inputs: { lateness_ms: number | null }[];
      };
      const waits = `Sync_high waits out the camera: ${JSON.stringify(syncHigh)}`;
      const camera = syncHigh.inputs[0].lateness_ms;
      assert.ok(camera !== null && camera >= 900, waits);
      for (const input of syncHigh.inputs) assert.ok(syncHigh.delay_ms >= (input.lateness_ms ?? 0), waits);

      // The saved low-quality video decodes as MPEG-4 Part 2 at a quarter of 1280x720.
      const low = await extractSaved(dir, "stream_low.dump", run.session);
      const [video] = await ffprobeStreams(low);
      assert.equal(video.codec_name, "mpeg4");
      assert.equal(video.width, 320);
      assert.equal(video.height, 180);
      const high = await extractSaved(dir, "stream_high.dump", run.session);
      const [original] = await ffprobeStreams(high);
      assert.equal(original.codec_name, "mpeg2video");
      assert.equal(original.width, 1280);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
