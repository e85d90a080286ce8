/**
 * `localservice.syncer`: releases the RTP streams of its inputs in step. Every datagram leaves at its capture time
 * (from its stream's RTCP sender reports, or the input's configured offset until reports come) plus one delay D
 * shared by all inputs, chosen from the latest-arriving input plus a margin and changed only smoothly: streams
 * captured together leave together within `precision`, however late one of them arrives (the report's camera, 1 s).
 * The timing rules are in lib/media/sync.ts; this shell copies datagrams in, runs one precise timer for the earliest
 * due time (never one per datagram) and publishes the figures.
 */
import type { CounterSet } from "../../core/metrics.ts";
import { systemClock } from "../../core/clock.ts";
import { PreciseTimer, Sleeper } from "../../core/precise_timer.ts";
import { Synchronizer } from "../../media/sync.ts";
import { CLOCK_RATE_SYNTAX, parseClockRate } from "../../media/clock_rates.ts";
import type { Endpoint } from "../../net/udp.ts";
import { ArrayBatch } from "../batch.ts";
import { defineElement } from "../element.ts";
import { numberParam, type Param, ParamProblem } from "../params.ts";

/** Most offsets one may give (one per input). */
const MAX_INPUTS = 16;

const offsetsParam: Param<number[]> = {
  doc: "per input, seconds it arrives after capture, used until its sender reports come (`offsets = 1.0, 0`)",
  default: [],
  parse(values) {
    if (values.length > MAX_INPUTS) {
      return new ParamProblem(`expected at most ${MAX_INPUTS} offsets, one per input`);
    }
    const out: number[] = [];
    for (const v of values) {
      const n = v.kind === "number" ? Number(v.text) : NaN;
      if (!Number.isFinite(n) || Math.abs(n) > 60) {
        return new ParamProblem("expected offsets in seconds between -60 and 60, separated by commas");
      }
      out.push(n);
    }
    return out;
  },
};

const clockRatesParam: Param<ReadonlyMap<number, number>> = {
  doc: 'clock rates of dynamic payload types, as "type:Hz" strings (`clock_rates = "96:90000", "97:16000"`)',
  default: new Map(),
  parse(values) {
    const out = new Map<number, number>();
    for (const v of values) {
      const rate = v.kind === "string" ? parseClockRate(v.text) : null;
      if (!rate) return new ParamProblem(`expected strings ${CLOCK_RATE_SYNTAX}`);
      out.set(rate.payloadType, rate.hz);
    }
    return out;
  },
};

export const syncer = defineElement({
  name: "localservice.syncer",
  description:
    "Releases RTP streams in step: each datagram at its capture time (RTCP sender reports) plus one delay",
  ports: { inputs: { min: 1, max: MAX_INPUTS }, outputs: { min: 1, max: 1 } },
  params: {
    precision: numberParam("seconds within which datagrams captured together leave together", {
      min: 0.0001,
      max: 1,
      default: 0.001,
    }),
    max_delay: numberParam("seconds a datagram may wait at most; one that would wait longer is dropped", {
      min: 0.01,
      max: 60,
      default: 3,
    }),
    margin: numberParam("seconds of delay beyond the latest input's lateness, for its jitter", {
      min: 0,
      max: 5,
      default: 0.02,
    }),
    hold: numberParam(
      "seconds before each release the syncer keeps the node's thread, so that no work starting then makes it late (CPU: hold x releases/s; all holds of a thread together at most 10% of it)",
      { min: 0, max: 0.002, default: 0.0005 },
    ),
    offsets: offsetsParam,
    max_bytes: numberParam("bytes the held datagrams may take; beyond it they are dropped", {
      min: 1024 * 1024,
      max: 2 ** 34,
      default: 64 * 1024 * 1024,
      integer: true,
    }),
    clock_rates: clockRatesParam,
  },
  check: (params, { inputs }) =>
    params.offsets.length > inputs
      ? [`${params.offsets.length} offsets for ${inputs} inputs: give one per input`]
      : [],
  create({ name, session, params, inputs, outputs, node, clockRates }) {
    if (params.offsets.length > inputs.length) {
      throw new Error(
        `Cannot align by offsets: ${params.offsets.length} offsets for ${inputs.length} inputs (${
          inputs.join(", ")
        })`,
      );
    }
    const [out] = outputs;
    const { clock } = node;
    const precisionUs = params.precision * 1e6;
    const sync = new Synchronizer<Endpoint>({
      inputs: inputs.length,
      precisionUs,
      maxDelayUs: params.max_delay * 1e6,
      marginUs: params.margin * 1e6,
      offsetsUs: params.offsets.map((s) => s * 1e6),
      maxBytes: params.max_bytes,
      // What the program tells upstream (a transcoder's output), then the AP's own clock_rates over it.
      clockRates: new Map([...clockRates ?? [], ...params.clock_rates]),
    });
    const emit = (data: Uint8Array[], from: Endpoint[], rtcp: boolean) =>
      out.emit(new ArrayBatch(data, from), rtcp);
    // The timer fires at most an eighth of the precision early; everything due within a quarter of it leaves
    // together (so a datagram leaves at most a quarter early: two streams at most half the precision apart).
    const tolerance = precisionUs / 8;
    // On the real clock the timer sleeps its last 2 ms off the main thread (FFI) instead of spinning them, which
    // would take a whole core from the rest of the node at a release every millisecond or two.
    const sleeper = clock === systemClock ? Sleeper.open() : null;
    // The last `hold` before each release is waited without yielding the thread: a burst of input, or a worker's
    // message, that would start then cannot make the release late (presentation test, participants' A/V skew p99:
    // 0.70-0.91 ms over 3 runs without, 0.16-0.95 ms over 16 runs with 0.25-0.7 ms).
    const timer = new PreciseTimer(clock, () => tick(), {
      toleranceUs: tolerance,
      sleeper,
      holdUs: params.hold * 1e6,
    });
    const sets: CounterSet[] = [];
    const senders: (Endpoint | undefined)[] = [];
    let stopped = false;

    const schedule = (now: number) => {
      const due = stopped ? null : sync.nextDueUs(now);
      if (due === null) return timer.cancel();
      const armed = timer.armedUs;
      if (armed === null || due < armed - tolerance) timer.arm(Math.max(due, now + tolerance));
    };
    const tick = () => {
      const now = clock.nowUs();
      sync.release(now, emit);
      schedule(now);
    };

    const publish = () => {
      const labels = { session, ap: name };
      const set = node.metrics.set("syncer", labels);
      set.gauge("delay_seconds", "The common delay D: capture to release", () => (sync.delayUs ?? NaN) / 1e6);
      set.gauge("buffered_bytes", "Bytes of datagrams held", () => sync.held.bytes);
      set.gauge("buffered_packets", "Datagrams held", () => sync.held.packets);
      set.gauge(
        "memory_bytes",
        "Memory holding the datagrams (whole slab chunks and queue rings)",
        () => sync.held.memory,
      );
      set.counter(
        "late_total",
        "Datagrams that arrived after their due time (D raised, or dropped)",
        () => sync.totals().late,
      );
      set.counter(
        "malformed_total",
        "Datagrams that were neither RTP nor RTCP, dropped",
        () => sync.totals().malformed,
      );
      set.counter(
        "release_late_total",
        "Datagrams released later than precision after their due time",
        () => sync.releaseLate,
      );
      set.counter(
        "hold_seconds_total",
        "Time the syncer kept the node's thread busy before its releases (the hold parameter)",
        () => timer.heldUs / 1e6,
      );
      sets.push(set);
      const reasons = [
        ["max_delay", "dropped_max_delay"],
        ["cap", "dropped_cap"],
        ["late", "dropped_late"],
        ["reorder", "dropped_reorder"],
      ] as const;
      for (const [reason, key] of reasons) {
        const d = node.metrics.set("syncer", { ...labels, reason });
        d.counter(
          "dropped_total",
          "Datagrams dropped: too late or too early for max_delay, over max_bytes, late of a new stream, reordered too far",
          () => sync.totals()[key],
        );
        sets.push(d);
      }
      inputs.forEach((input, i) => {
        const s = node.metrics.set("syncer_input", { ...labels, input });
        s.gauge(
          "offset_seconds",
          "How late the input arrives after capture: highest arrival - capture of the last 10 s (NaN when silent)",
          () => (sync.latenessUs(i, clock.nowUs()) ?? NaN) / 1e6,
        );
        const counts = () => sync.counts(i);
        s.counter("packets_in_total", "RTP datagrams into the input", () => counts().packets_in);
        s.counter("packets_out_total", "RTP datagrams of the input released", () => counts().packets_out);
        s.counter(
          "late_total",
          "Datagrams of the input that arrived after their due time",
          () => counts().late,
        );
        s.counter(
          "reports_total",
          "Sender reports taken into the input's clock mappings",
          () => counts().reports,
        );
        sets.push(s);
      });
    };

    return {
      start() {
        publish();
        return Promise.resolve();
      },
      push(input, batch, rtcp) {
        if (stopped) return;
        const now = clock.nowUs();
        // Each held datagram keeps its sender until it leaves; one object per sender and flow is kept instead of
        // a fresh one per datagram, so the collector has no long-lived garbage to copy and promote.
        const k = input * 2 + (rtcp ? 1 : 0);
        for (let i = 0; i < batch.count; i++) {
          let from = batch.from(i);
          const last = senders[k];
          if (last && last.port === from.port && last.host === from.host) from = last;
          else senders[k] = from;
          sync.push(input, batch.data(i), rtcp, now, from);
        }
        const due = sync.nextDueUs(now);
        if (due !== null && due <= now + tolerance) tick();
        else schedule(now);
      },
      async stop() {
        stopped = true;
        timer.cancel();
        // What is held goes on now, so the sinks (stopped after this) get the last seconds.
        sync.flush(emit);
        for (const s of sets) node.metrics.remove(s);
        await sleeper?.close();
      },
      status() {
        const now = clock.nowUs();
        const s = sync.status(now);
        return {
          syncer: {
            ...s,
            precision_ms: params.precision * 1000,
            max_delay_ms: params.max_delay * 1000,
            margin_ms: params.margin * 1000,
            hold_ms: params.hold * 1000,
            // Time the hold kept the thread busy so far.
            held_ms: Math.round(timer.heldUs) / 1000,
            inputs: s.inputs.map((x, i) => ({ name: inputs[i], ...x })),
          },
        };
      },
    };
  },
});
