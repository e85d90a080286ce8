import assert from "node:assert/strict";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { upstreamClockRates } from "../../lib/graph/clock_hints.ts";
import { checkProgram } from "../../lib/graph/program.ts";

const kinds = coreElements();
const APPENDIX_A = await Deno.readTextFile(
  new URL("../../config/sessions/presentation.dipronn", import.meta.url),
);
const FOUR_NODES = await Deno.readTextFile(
  new URL("../../config/sessions/presentation_4nodes.dipronn", import.meta.url),
);

const ratesOf = (plan: ReturnType<typeof checkProgram>) =>
  Object.fromEntries(plan.aps.map((ap) => [ap.name, Object.fromEntries(ap.clockRates)]));

Deno.test("planSession tells every AP downstream of the transcoder its output's clock rate, and no other AP", () => {
  const rates = ratesOf(checkProgram(APPENDIX_A, { file: "presentation.dipronn", kinds }));
  // mp4v leaves ffmpeg as payload type 96 at 90 kHz (lib/media/ffmpeg.ts OUTPUT_PAYLOAD_TYPES).
  for (const ap of ["Sync_low", "Dup_low", "Saver_low", "Reflector_low"]) {
    assert.deepEqual(rates[ap], { 96: 90000 }, ap);
  }
  for (const ap of ["Dup_V", "Dup_A", "Transcode", "Sync_high", "Dup_high", "Saver_high", "Reflector_high"]) {
    assert.deepEqual(rates[ap], {}, ap);
  }
});

Deno.test("planSession tells an AP on one node the clock rate of a transcoder placed on another", () => {
  const nodeOf: Record<string, string> = {
    Dup_V: "brno",
    Dup_A: "brno",
    Transcode: "brno",
    Sync_high: "prague",
    Dup_high: "prague",
    Reflector_high: "prague",
    Sync_low: "liberec",
    Dup_low: "liberec",
    Reflector_low: "liberec",
    Saver_high: "pilsen",
    Saver_low: "pilsen",
  };
  const part = checkProgram(FOUR_NODES, {
    file: "presentation_4nodes.dipronn",
    kinds,
    placement: { self: "liberec", nodeOf },
  });
  assert.deepEqual(ratesOf(part), {
    Sync_low: { 96: 90000 },
    Dup_low: { 96: 90000 },
    Reflector_low: { 96: 90000 },
  });
});

Deno.test("planSession tells the MPV payload type when the transcoder sends mp2v", () => {
  const text = APPENDIX_A.replace('output_format = "mp4v";', 'output_format = "mp2v";');
  const rates = ratesOf(checkProgram(text, { file: "p.dipronn", kinds }));
  assert.deepEqual(rates.Sync_low, { 32: 90000 });
});

Deno.test("upstreamClockRates carries rates through, and leaves out a payload type two upstreams give different rates", () => {
  const ap = (name: string, to: string[]) =>
    ({
      name,
      outputs: [{ name: "out", targets: to.map((t) => ({ kind: "ap", ap: t, port: "in" })) }],
    }) as never;
  const maker = (hz: number) => ({ outputClockRates: () => new Map([[96, hz], [97, 16000]]) }) as never;
  const pass = {} as never;
  const kindOf = new Map([["A", maker(90000)], ["B", maker(48000)], ["C", pass], ["D", pass]]);
  const params = new Map(["A", "B", "C", "D"].map((n) => [n, {}]));
  const into = upstreamClockRates(
    [ap("A", ["C"]), ap("B", ["C"]), ap("C", ["D"]), ap("D", [])],
    kindOf,
    params,
  );
  assert.deepEqual(Object.fromEntries(into.get("C")!), { 97: 16000 });
  assert.deepEqual(Object.fromEntries(into.get("D")!), { 97: 16000 });
  assert.equal(into.get("A"), undefined);
});
