/**
 * A sweep for people: the text table (a block per packet size, a row per step, then the maximal throughputs laid
 * out like the seed report's Tables 4-8, with compared tables beside them) and a self-contained HTML report with
 * the loss and delay charts of each size (the report's Figures 7-10) and the same tables. No script, no link out;
 * every text is escaped.
 */
import { esc, lineChart, type Series } from "../dashboard/charts.ts";
import type { ThroughputTable } from "./report_tables.ts";
import { type ReceiverFigures, type SweepResult, type SweepSize, throughputTable } from "./sweep.ts";

const fixed = (v: number | null, digits: number) => (v === null ? "-" : v.toFixed(digits));

/** Text cells aligned in columns: the first `headers` rows left-aligned, the rest right-aligned but column 0. */
function grid(rows: readonly (readonly string[])[], headers: number): string[] {
  const widths: number[] = [];
  for (const row of rows) row.forEach((c, i) => widths[i] = Math.max(widths[i] ?? 0, c.length));
  return rows.map((row, r) =>
    row.map((c, i) => (r < headers || i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ")
      .trimEnd()
  );
}

function endNote(s: SweepSize, limit: number): string {
  switch (s.ended_by) {
    case "loss":
      return `ended by loss above ${limit}%`;
    case "max-rate":
      return "ended at --max-rate without passing the loss limit (maxima are lower bounds)";
    case "aborted":
      return "stopped";
    default:
      return `ended after ${s.steps.length} steps without passing the loss limit (maxima are lower bounds)`;
  }
}

/** One block per size: a row per step with the offered rate and every receiver's loss, delay and throughput. */
export function formatSteps(result: SweepResult): string {
  const blocks = result.sizes.map((s) => {
    const head1 = ["", "", ""];
    const head2 = ["rate/s", "offered Mb/s", "sent Mb/s"];
    result.receivers.forEach((name) => {
      head1.push(name, "", "", "");
      head2.push("loss %", "p50 ms", "p99 ms", "Mb/s");
    });
    const rows = s.steps.map((step) => [
      String(step.rate),
      step.offered_mbit_per_s.toFixed(2),
      step.sent_mbit_per_s.toFixed(2),
      ...step.receivers.flatMap((r) => [
        r.loss_percent.toFixed(3),
        fixed(r.delay_p50_ms, 3),
        fixed(r.delay_p99_ms, 3),
        r.mbit_per_s.toFixed(2),
      ]),
    ]);
    // Receiver names span their four columns: only the first row of headers may overflow into the next cells.
    const body = grid([head2, ...rows], 1);
    const starts = columnStarts(body[0], head2);
    let line1 = "";
    head1.forEach((c, i) => {
      if (c) line1 = line1.padEnd(starts[i]) + c + " ";
    });
    return [`${s.size} B: ${endNote(s, result.loss_limit_percent)}`, line1.trimEnd(), ...body].join("\n");
  });
  return blocks.join("\n\n") + "\n";
}

/** Where each header cell starts in an aligned line. */
function columnStarts(line: string, cells: readonly string[]): number[] {
  const starts: number[] = [];
  let from = 0;
  for (const c of cells) {
    const at = line.indexOf(c, from);
    starts.push(at);
    from = at + c.length;
  }
  return starts;
}

/** A throughput table's columns as text lines (title, header, a line per size), right-aligned. */
function tableLines(
  t: ThroughputTable,
  sizes: readonly number[],
  lowerBound: (size: number) => boolean,
): string[] {
  const rows = sizes.map((size) =>
    (t.rows.get(size) ?? t.columns.map(() => null)).map((v) =>
      v !== null && lowerBound(size) ? `>=${v.toFixed(1)}` : fixed(v, 1)
    )
  );
  // Headers right-aligned too, over their numbers.
  const widths = t.columns.map((c, i) => Math.max(c.length, ...rows.map((r) => r[i].length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => c.padStart(widths[i])).join("  ");
  return [t.title, line(t.columns), ...rows.map(line)];
}

/**
 * This sweep's maximal-throughput table (rows: the sizes swept; columns: receivers, then all), with the compared
 * tables' values for the same sizes beside it; tables that do not fit in `width` go below, with the sizes again.
 */
export function formatThroughput(
  result: SweepResult,
  compared: readonly ThroughputTable[] = [],
  width = 150,
): string {
  const sizes = result.sizes.map((s) => s.size);
  const lower = new Set(result.sizes.filter((s) => s.ended_by !== "loss").map((s) => s.size));
  const own = tableLines(
    throughputTable(result, `Maximal throughput [Mb/s] (loss <= ${result.loss_limit_percent}%)`),
    sizes,
    (size) => lower.has(size),
  );
  const label = ["", "Packet size", ...sizes.map((s) => `${s} B`)];
  const blocks = [own, ...compared.map((t) => tableLines(t, sizes, () => false))];
  const wide = (b: readonly string[]) => Math.max(...b.map((l) => l.length));
  const out: string[] = [];
  let row: string[][] = [];
  const flush = () => {
    const all = [label, ...row];
    const widths = all.map(wide);
    for (let i = 0; i < label.length; i++) {
      out.push(all.map((b, k) => (b[i] ?? "").padEnd(widths[k])).join(i === 0 ? "   " : " | ").trimEnd());
    }
    out.push("");
    row = [];
  };
  for (const b of blocks) {
    const used = [label, ...row].reduce((n, r) => n + wide(r) + 3, 0);
    if (row.length && used + wide(b) > width) flush();
    row.push(b);
  }
  flush();
  return out.join("\n");
}

/** The whole text report: the steps of every size, then the maximal throughputs. */
export function formatSweep(result: SweepResult, compared: readonly ThroughputTable[] = []): string {
  return `${formatSteps(result)}\n${formatThroughput(result, compared)}`;
}

/** Size and title of a chart (the title says the packet size by default). */
export interface ChartSize {
  readonly width?: number;
  readonly height?: number;
  readonly title?: string;
}

/** A previous sweep drawn beside this one (`--compare FILE`): its curves dashed, named with `label`. */
export interface ComparedRun {
  readonly label: string;
  readonly result: SweepResult;
}

type Pick = (r: ReceiverFigures | undefined) => number;

/** A series per receiver of this run, then (dashed) per receiver of the compared run at the same size, if any. */
function seriesOf(result: SweepResult, s: SweepSize, pick: Pick, compared?: ComparedRun): Series[] {
  const own: Series[] = result.receivers.map((name, i) => ({
    name,
    points: s.steps.map((step) => [step.offered_mbit_per_s, pick(step.receivers[i])] as const),
  }));
  const other = compared?.result.sizes.find((x) => x.size === s.size);
  if (!compared || !other) return own;
  // A sweep.json of another version may lack figures: a step without them is a gap, not an error.
  const steps = Array.isArray(other.steps) ? other.steps : [];
  return [
    ...own,
    ...compared.result.receivers.map((name, i) => ({
      name: `${compared.label}: ${name}`,
      dashed: true,
      points: steps.map((step) =>
        [
          Number(step?.offered_mbit_per_s),
          pick(Array.isArray(step?.receivers) ? step.receivers[i] : undefined),
        ] as const
      ),
    })),
  ];
}

const lossOf: Pick = (r) => (typeof r?.loss_percent === "number" ? r.loss_percent : NaN);
const delayOf: Pick = (r) => (typeof r?.delay_p99_ms === "number" ? r.delay_p99_ms : NaN);

/**
 * Loss (%) against offered Mb/s for one size, a series per receiver with its measured points (and the compared
 * run's, dashed).
 */
export function lossChart(
  result: SweepResult,
  s: SweepSize,
  size: ChartSize = {},
  compared?: ComparedRun,
): string {
  return lineChart(seriesOf(result, s, lossOf, compared), {
    title: `${s.size} B: loss`,
    x: "linear",
    xLabel: "offered [Mb/s]",
    yLabel: "loss [%]",
    points: true,
    ...size,
  });
}

/** Delay p99 (ms) against offered Mb/s for one size; a step without delay samples is a gap. */
export function delayChart(
  result: SweepResult,
  s: SweepSize,
  size: ChartSize = {},
  compared?: ComparedRun,
): string {
  return lineChart(seriesOf(result, s, delayOf, compared), {
    title: `${s.size} B: delay p99`,
    x: "linear",
    xLabel: "offered [Mb/s]",
    yLabel: "delay p99 [ms]",
    points: true,
    ...size,
  });
}

function htmlTable(t: ThroughputTable, lowerBound: (size: number) => boolean = () => false): string {
  const head = ["Packet size", ...t.columns].map((c) => `<th>${esc(c)}</th>`).join("");
  const rows = [...t.rows].map(([size, values]) =>
    `<tr><th>${size} B</th>${
      values.map((v) => `<td>${v !== null && lowerBound(size) ? "&#8805;" : ""}${esc(fixed(v, 1))}</td>`)
        .join("")
    }</tr>`
  );
  return `<table><caption>${esc(t.title)}</caption><thead><tr>${head}</tr></thead><tbody>${
    rows.join("")
  }</tbody></table>`;
}

/** A size's steps: a row per step, a group of columns per receiver. */
function stepsHtml(result: SweepResult, s: SweepSize): string {
  const groups = result.receivers.map((name) => `<th colspan="4">${esc(name)}</th>`).join("");
  const heads = ["rate/s", "offered Mb/s", "sent Mb/s"].map((h) => `<th rowspan="2">${h}</th>`).join("");
  const sub = result.receivers.map(() =>
    ["loss %", "p50 ms", "p99 ms", "Mb/s"].map((h) => `<th>${h}</th>`).join("")
  ).join("");
  const cell = (text: string) => `<td>${esc(text)}</td>`;
  const rows = s.steps.map((step) =>
    `<tr>${cell(String(step.rate))}${cell(step.offered_mbit_per_s.toFixed(2))}${
      cell(step.sent_mbit_per_s.toFixed(2))
    }${
      step.receivers.map((r) =>
        cell(r.loss_percent.toFixed(3)) + cell(fixed(r.delay_p50_ms, 3)) + cell(fixed(r.delay_p99_ms, 3)) +
        cell(r.mbit_per_s.toFixed(2))
      ).join("")
    }</tr>`
  );
  return `<table class="steps"><thead><tr>${heads}${groups}</tr><tr>${sub}</tr></thead><tbody>${
    rows.join("")
  }</tbody></table>`;
}

/**
 * The HTML report: per size a row with its loss and delay charts, then the maximal-throughput tables. With `run`,
 * a previous sweep's curves are drawn dashed in the charts of the sizes both swept.
 */
export function sweepHtml(
  result: SweepResult,
  compared: readonly ThroughputTable[] = [],
  run?: ComparedRun,
): string {
  const lower = new Set(result.sizes.filter((s) => s.ended_by !== "loss").map((s) => s.size));
  const figures = result.sizes.map((s) =>
    `<section class="size"><h2>${s.size} B</h2><p>${esc(endNote(s, result.loss_limit_percent))}</p>` +
    `<div class="row">${lossChart(result, s, {}, run)}${delayChart(result, s, {}, run)}</div>${
      stepsHtml(result, s)
    }</section>`
  );
  const own = htmlTable(
    throughputTable(result, `Maximal throughput [Mb/s] (loss <= ${result.loss_limit_percent}%)`),
    (size) => lower.has(size),
  );
  const title = `probe sweep to ${result.to}`;
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(title)}</title>
<style>
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.row, .tables { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; }
table.steps { margin-top: 0.5em; }
caption { font-weight: bold; text-align: left; padding-bottom: 0.3em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; }
td { text-align: right; font-variant-numeric: tabular-nums; }
</style></head><body>
<h1>${esc(title)}</h1>
<p>${
    esc(
      `Started ${result.started}; receivers: ${result.receivers.join(", ")}; steps of ${result.step_s} s; ` +
        `loss limit ${result.loss_limit_percent}%${
          result.rtp ? "; RTP" : ""
        }. Offered rate: datagrams/s x UDP payload.`,
    )
  }</p>${
    run
      ? `\n<p>${
        esc(`Dashed: ${run.label}, the sweep to ${run.result.to} started ${run.result.started} (--compare).`)
      }</p>`
      : ""
  }
${figures.join("\n")}
<h2>Maximal throughput</h2>
<div class="tables">${own}${compared.map((t) => htmlTable(t)).join("")}</div>
</body></html>
`;
}
