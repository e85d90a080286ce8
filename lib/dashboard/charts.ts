/**
 * Line charts as SVG text, drawn on the server with d3-scale (axes, ticks) and d3-shape (the lines): no DOM and no
 * script in the page. Used by the dashboard (time series of the last minutes) and by `probe sweep`'s report (loss
 * and delay against offered rate). Every text in the SVG is escaped; every series is a `<g class="series">` with
 * its name in `data-name` and one `<circle>` per point when `points` is asked, so tests and readers find them.
 */
// @ts-types="npm:@types/d3-scale@^4"
import { scaleLinear, scaleLog, scaleTime } from "d3-scale";
// @ts-types="npm:@types/d3-shape@^3"
import { line } from "d3-shape";

export interface Series {
  readonly name: string;
  /** [x, y]: x is a time (ms since the epoch) for a time chart. Points with a y that is not finite are gaps. */
  readonly points: readonly (readonly [number, number])[];
  /**
   * Drawn dashed, as a run to compare with: dashed series take the palette's colours from the start again, so the
   * compared run's first series has the colour of this run's first.
   */
  readonly dashed?: boolean;
}

export interface ChartOptions {
  readonly title: string;
  /** The x axis: "time" (ms since the epoch, shown as hh:mm:ss) or a quantity. */
  readonly x: "time" | "linear";
  readonly xLabel?: string;
  readonly yLabel?: string;
  /** A logarithmic y axis (values <= 0 are left out). */
  readonly logY?: boolean;
  readonly width?: number;
  readonly height?: number;
  /** A circle on every point (the measured points of a sweep). */
  readonly points?: boolean;
  /** The element id of the SVG, for a page that replaces it live. */
  readonly id?: string;
}

/** Colours of the series, in order (readable on white, distinct for common colour blindness). */
export const PALETTE = [
  "#1f77b4",
  "#d62728",
  "#2ca02c",
  "#ff7f0e",
  "#9467bd",
  "#8c564b",
  "#e377c2",
  "#17becf",
];

const MARGIN = { top: 28, right: 30, bottom: 56, left: 58 };

/** Text safe inside SVG or HTML. */
export function esc(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** A short number: 1.2k, 3.4M, 0.05. */
export function shortNumber(v: number): string {
  const a = Math.abs(v);
  if (a >= 1e9) return `${trim(v / 1e9)}G`;
  if (a >= 1e6) return `${trim(v / 1e6)}M`;
  if (a >= 1e3) return `${trim(v / 1e3)}k`;
  if (a === 0) return "0";
  if (a < 0.01) return v.toExponential(0);
  return trim(v);
}

function trim(v: number): string {
  return String(Number(v.toPrecision(3)));
}

function clock(ms: number): string {
  return new Date(ms).toISOString().slice(11, 19);
}

/** The colour of each series: solid and dashed ones each go through the palette in order. */
function colourOf(series: readonly Series[]): string[] {
  let solid = 0;
  let dashed = 0;
  return series.map((s) => PALETTE[(s.dashed ? dashed++ : solid++) % PALETTE.length]);
}

/** One chart of `series` as an SVG element. */
export function lineChart(series: readonly Series[], o: ChartOptions): string {
  const width = o.width ?? 520;
  const height = o.height ?? 216;
  const inner = { w: width - MARGIN.left - MARGIN.right, h: height - MARGIN.top - MARGIN.bottom };
  const usable = (p: readonly [number, number]) =>
    Number.isFinite(p[0]) && Number.isFinite(p[1]) && (!o.logY || p[1] > 0);
  const all = series.flatMap((s) => s.points.filter(usable));
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  let x0 = xs.length ? Math.min(...xs) : 0;
  let x1 = xs.length ? Math.max(...xs) : 1;
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const yMax = ys.length ? Math.max(...ys) : 1;
  const yMin = o.logY ? (ys.length ? Math.min(...ys) : 0.1) : Math.min(0, ...ys);
  const x = o.x === "time"
    ? scaleTime().domain([new Date(x0), new Date(x1)]).range([0, inner.w])
    : scaleLinear().domain([x0, x1]).range([0, inner.w]).nice();
  const y = o.logY
    ? scaleLog().domain([yMin, yMax === yMin ? yMin * 10 : yMax]).range([inner.h, 0]).nice()
    : scaleLinear().domain([yMin, yMax === yMin ? yMin + 1 : yMax]).range([inner.h, 0]).nice();
  const xAt = (
    v: number,
  ) => (o.x === "time" ? (x as (d: Date) => number)(new Date(v)) : (x as (n: number) => number)(v));
  const yAt = (v: number) => y(v);

  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" class="chart"${
      o.id ? ` id="${esc(o.id)}"` : ""
    } width="${width}" ` +
      `height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="${esc(o.title)}" ` +
      `font-family="sans-serif" font-size="11">`,
  );
  parts.push(`<text x="${MARGIN.left}" y="16" font-size="13" font-weight="bold">${esc(o.title)}</text>`);
  parts.push(`<g transform="translate(${MARGIN.left},${MARGIN.top})">`);
  // Grid and axes.
  const yTicks = o.logY
    ? (y.ticks(4) as number[]).filter((_, i, a) => a.length <= 6 || i % 2 === 0)
    : y.ticks(5);
  for (const t of yTicks) {
    const py = yAt(t).toFixed(1);
    parts.push(`<line x1="0" x2="${inner.w}" y1="${py}" y2="${py}" stroke="#e5e5e5"/>`);
    parts.push(
      `<text x="-6" y="${py}" dy="0.32em" text-anchor="end" fill="#555">${esc(shortNumber(t))}</text>`,
    );
  }
  const xTicks = o.x === "time" ? (x.ticks(5) as Date[]).map((d) => d.getTime()) : (x.ticks(6) as number[]);
  for (const t of xTicks) {
    const px = xAt(t).toFixed(1);
    parts.push(`<line x1="${px}" x2="${px}" y1="${inner.h}" y2="${inner.h + 4}" stroke="#888"/>`);
    const label = o.x === "time" ? clock(t) : shortNumber(t);
    parts.push(`<text x="${px}" y="${inner.h + 15}" text-anchor="middle" fill="#555">${esc(label)}</text>`);
  }
  parts.push(`<line x1="0" x2="${inner.w}" y1="${inner.h}" y2="${inner.h}" stroke="#888"/>`);
  parts.push(`<line x1="0" x2="0" y1="0" y2="${inner.h}" stroke="#888"/>`);
  if (o.xLabel) {
    parts.push(`<text x="${inner.w / 2}" y="${inner.h + 32}" text-anchor="middle">${esc(o.xLabel)}</text>`);
  }
  if (o.yLabel) {
    parts.push(
      `<text transform="translate(-44,${inner.h / 2}) rotate(-90)" text-anchor="middle">${
        esc(o.yLabel)
      }</text>`,
    );
  }
  // Lines, one group per series.
  const path = line<readonly [number, number]>()
    .defined(usable)
    .x((p) => xAt(p[0]))
    .y((p) => yAt(p[1]));
  const colours = colourOf(series);
  series.forEach((s, i) => {
    const colour = colours[i];
    parts.push(
      `<g class="series" data-name="${esc(s.name)}"${
        s.dashed ? ' data-dashed="true"' : ""
      } fill="none" stroke="${colour}">`,
    );
    const d = path(s.points);
    if (d) parts.push(`<path d="${d}" stroke-width="1.8"${s.dashed ? ' stroke-dasharray="5 3"' : ""}/>`);
    if (o.points) {
      for (const p of s.points.filter(usable)) {
        parts.push(
          `<circle cx="${xAt(p[0]).toFixed(1)}" cy="${yAt(p[1]).toFixed(1)}" r="2.5" fill="${colour}" ` +
            `data-x="${p[0]}" data-y="${p[1]}"/>`,
        );
      }
    }
    parts.push(`</g>`);
  });
  // Legend, in a row under the x axis (it never covers a point).
  let lx = 0;
  series.forEach((s, i) => {
    const name = s.name.slice(0, 28);
    const ly = inner.h + 46;
    const colour = colours[i];
    const mark = s.dashed
      ? `<line x1="${lx}" x2="${lx + 10}" y1="${ly - 3}" y2="${
        ly - 3
      }" stroke="${colour}" stroke-width="2" ` +
        `stroke-dasharray="3 2"/>`
      : `<rect x="${lx}" y="${ly - 4}" width="10" height="3" fill="${colour}"/>`;
    parts.push(
      `<g class="legend">${mark}` +
        `<text x="${lx + 14}" y="${ly}" fill="#333">${esc(name)}</text></g>`,
    );
    lx += 24 + name.length * 6;
  });
  if (all.length === 0) {
    parts.push(
      `<text x="${inner.w / 2}" y="${inner.h / 2}" text-anchor="middle" fill="#999">no data yet</text>`,
    );
  }
  parts.push(`</g></svg>`);
  return parts.join("");
}
