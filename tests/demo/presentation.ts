/**
 * `make demo`: the seed report's lecture (section 4.2, Appendix A) on one node, with ffmpeg as the camera (1 s late)
 * and the audio grabber, one participant per reflector, for DEMO_SECONDS (default 20). Prints what arrived where,
 * the A/V skew each participant measured, what the syncers and the transcoder did, the saved files, and writes one
 * frame of each twinstream as PNG (the burnt-in clocks differ by the transcoding delay, as in the report's Figure 6:
 * each twinstream leaves its syncer at capture + its own D, so the clocks differ by D_low - D_high).
 *
 *   make demo                                  results and frames in demo-out/
 *   DEMO_SECONDS=60 DEMO_OUT=/tmp/lecture make demo
 */
import { type ParticipantReport, runPresentation, savedFiles, saveFrames } from "../e2e/_presentation.ts";
import type { RtpReport } from "../../lib/probe/rtp_streams.ts";

const seconds = Number(Deno.env.get("DEMO_SECONDS") ?? "20");
if (!Number.isFinite(seconds) || seconds < 5 || seconds > 3600) {
  console.error(`DEMO_SECONDS must be a number of seconds in 5..3600, got "${Deno.env.get("DEMO_SECONDS")}"`);
  Deno.exit(2);
}
const given = Deno.env.get("DEMO_OUT") ?? "demo-out";
const out = given.startsWith("/") ? given : `${Deno.cwd()}/${given}`;
await Deno.remove(out, { recursive: true }).catch(() => {});
const dataDir = `${out}/data`;

const us = (
  n: number | undefined | null,
) => (n === undefined || n === null ? "-" : `${(n / 1000).toFixed(3)} ms`);

function participant(label: string, r: ParticipantReport): string[] {
  const rtp = r.rtp as RtpReport | undefined;
  if (!rtp) return [`${label}: no RTP arrived`];
  const lines: string[] = [];
  for (const g of rtp.groups) {
    lines.push(`${label}: CNAME ${g.cname ?? "(none yet)"}`);
    for (const s of g.streams) {
      lines.push(
        `  ssrc ${s.ssrc.toString(16).padStart(8, "0")}  pt ${s.payload_type}  ${s.clock_rate ?? "?"} Hz  ` +
          `${s.packets} packets  ${
            (s.bytes / 1e6).toFixed(2)
          } MB  lost ${s.lost}  sender reports ${s.sender_reports}`,
      );
    }
    for (const k of g.skew) {
      lines.push(
        `  A/V skew (ssrc ${k.stream.toString(16)} against ${
          k.reference.toString(16)
        }, ${k.samples} samples): ` +
          `median ${us(k.median_us)}, |skew| p50 ${us(k.abs_us?.p50)} p99 ${us(k.abs_us?.p99)} max ${
            us(k.abs_us?.max)
          }`,
      );
    }
  }
  return lines;
}

console.log(`edgenode demo: the report's lecture on one node for ${seconds} s (results in ${out}/)`);
// As root the node runs at a real-time priority, as an appliance built for the syncer's 1 ms would.
const realtimePriority = Deno.uid() === 0 ? 10 : undefined;
console.log(
  `  node: ${realtimePriority ? `real-time priority ${realtimePriority}` : "normal priority (not root)"}`,
);
const run = await runPresentation({
  seconds,
  dataDir,
  realtimePriority,
  log: (line) => console.log(`  ${line}`),
});

console.log("\nWhat arrived at the participants");
for (
  const line of [
    ...participant("high-quality twinstream", run.high),
    ...participant("low-quality twinstream", run.low),
  ]
) {
  console.log(`  ${line}`);
}

await Deno.writeTextFile(`${out}/session.json`, JSON.stringify(run.session, null, 2));
await Deno.writeTextFile(
  `${out}/participants.json`,
  JSON.stringify({ high: run.high, low: run.low }, null, 2),
);
console.log(`\nActive programs (datagrams in -> out; the whole status in ${out}/session.json)`);
for (const ap of run.session.aps as Record<string, unknown>[]) {
  const sum = (ports: unknown) => (ports as { packets: number }[]).reduce((n, p) => n + p.packets, 0);
  let extra = "";
  const syncer = ap.syncer as Record<string, unknown> | undefined;
  if (syncer) {
    extra = `  D ${syncer.delay_ms} ms, released later than precision: ${syncer.release_late}, ` +
      `dropped ${
        JSON.stringify((syncer.inputs as Record<string, unknown>[]).map((i) => i.dropped_max_delay))
      }`;
  }
  const transcoder = ap.transcoder as Record<string, Record<string, unknown>> | undefined;
  if (transcoder) {
    extra = `  ${transcoder.state}, ffmpeg restarts ${transcoder.ffmpeg?.restarts}, ` +
      `${transcoder.progress?.fps ?? "-"} fps, speed ${transcoder.progress?.speed ?? "-"}`;
  }
  const reflector = ap.reflector as Record<string, unknown> | undefined;
  if (reflector) extra = `  ${JSON.stringify(reflector).slice(0, 200)}`;
  console.log(
    `  ${String(ap.name).padEnd(15)} ${String(ap.kind).padEnd(24)} ${sum(ap.inputs)} -> ${
      sum(ap.outputs)
    }${extra}`,
  );
}

console.log("\nSaved files");
for (const f of await savedFiles(dataDir)) console.log(`  ${f}`);

const delayOf = (name: string) =>
  Number(
    ((run.session.aps as Record<string, unknown>[]).find((a) => a.name === name)?.syncer as
      | { delay_ms?: number }
      | undefined)?.delay_ms,
  );
console.log(
  `\nFrames (burnt-in clocks; they differ by D_low - D_high = ${
    (delayOf("Sync_low") - delayOf("Sync_high")).toFixed(1)
  } ms: each twinstream leaves its syncer at capture + its own D; give or take the keyframe interval)`,
);
for (const f of await saveFrames(dataDir, `${out}`, run)) console.log(`  ${f}`);
