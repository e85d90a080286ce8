/**
 * A session's graph as SVG: its APs as boxes in columns by data-flow depth (an AP's column is one more than the
 * deepest AP that feeds it), wires as arrows, DIPRONN_INPUT ports as labels on the left of the APs they feed and
 * outputs that leave the node as labels on the right. Each box shows the AP's name, kind, VM group and the packets
 * through its ports; a box's class says its state (`ap`, `ap vm`, `ap failed`). Built from the session's /status
 * entry alone; every name is escaped.
 */
import { esc, shortNumber } from "./charts.ts";

interface PortFigure {
  readonly name?: string;
  readonly packets?: number;
  readonly from?: string | null;
  readonly to?: readonly string[];
}

interface ApStatus {
  readonly name: string;
  readonly kind?: string;
  readonly vm?: string | null;
  readonly inputs?: readonly PortFigure[];
  readonly outputs?: readonly PortFigure[];
  readonly errors?: number;
  readonly sandbox?: { readonly state?: string };
  readonly transcoder?: { readonly state?: string };
}

const BOX = { w: 150, h: 54, gapX: 70, gapY: 18 };
const PAD = { left: 120, right: 170, top: 12, bottom: 12 };

/** The session's graph as an SVG element. */
export function sessionGraph(
  session: { readonly name?: string; readonly aps?: readonly ApStatus[] },
): string {
  const aps = (session.aps ?? []).slice(0, 256);
  const index = new Map(aps.map((a, i) => [a.name, i]));
  // Who feeds whom, from the outputs' targets ("AP.port").
  const edges: [number, number][] = [];
  for (const [i, ap] of aps.entries()) {
    for (const o of ap.outputs ?? []) {
      for (const to of o.to ?? []) {
        const j = index.get(String(to).split(".")[0]);
        if (j !== undefined && !String(to).startsWith("DIPRONN_OUTPUT") && !String(to).startsWith("link(")) {
          edges.push([i, j]);
        }
      }
    }
  }
  // Depth by relaxation (the graph check refuses loops; the bound keeps a bad status from spinning).
  const depth = aps.map(() => 0);
  for (let round = 0; round < aps.length; round++) {
    let moved = false;
    for (const [a, b] of edges) {
      if (depth[b] < depth[a] + 1) {
        depth[b] = depth[a] + 1;
        moved = true;
      }
    }
    if (!moved) break;
  }
  const columns: number[][] = [];
  aps.forEach((_, i) => (columns[depth[i]] ??= []).push(i));
  const pos = aps.map(() => ({ x: 0, y: 0 }));
  columns.forEach((col, c) =>
    col.forEach((i, r) => {
      pos[i] = { x: PAD.left + c * (BOX.w + BOX.gapX), y: PAD.top + r * (BOX.h + BOX.gapY) };
    })
  );
  const rows = Math.max(1, ...columns.map((c) => c?.length ?? 0));
  const width = PAD.left + Math.max(1, columns.length) * (BOX.w + BOX.gapX) - BOX.gapX + PAD.right;
  const height = PAD.top + rows * (BOX.h + BOX.gapY) - BOX.gapY + PAD.bottom;

  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11" role="img" ` +
      `aria-label="session ${esc(String(session.name ?? ""))}">`,
  );
  parts.push(
    `<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" ` +
      `orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#666"/></marker></defs>`,
  );
  for (const [a, b] of edges) {
    const x1 = pos[a].x + BOX.w;
    const y1 = pos[a].y + BOX.h / 2;
    const x2 = pos[b].x;
    const y2 = pos[b].y + BOX.h / 2;
    const mid = (x1 + x2) / 2;
    parts.push(
      `<path class="wire" d="M${x1},${y1}C${mid},${y1} ${mid},${y2} ${x2},${y2}" fill="none" stroke="#666" ` +
        `marker-end="url(#arrow)"/>`,
    );
  }
  for (const [i, ap] of aps.entries()) {
    const { x, y } = pos[i];
    const packetsIn = (ap.inputs ?? []).reduce((n, p) => n + (p.packets ?? 0), 0);
    const packetsOut = (ap.outputs ?? []).reduce((n, p) => n + (p.packets ?? 0), 0);
    const state = ap.sandbox?.state ?? ap.transcoder?.state ?? null;
    const failed = state === "failed" || (ap.errors ?? 0) > 0;
    const cls = `ap${ap.vm ? " vm" : ""}${failed ? " failed" : ""}`;
    parts.push(`<g class="${cls}" data-ap="${esc(ap.name)}">`);
    parts.push(
      `<rect x="${x}" y="${y}" width="${BOX.w}" height="${BOX.h}" rx="6" fill="${
        failed ? "#fde2e2" : ap.vm ? "#eef3fd" : "#f4f4f4"
      }" stroke="${failed ? "#c0392b" : ap.vm ? "#4a6fb5" : "#888"}"${
        ap.vm ? ' stroke-dasharray="4 2"' : ""
      }/>`,
    );
    parts.push(`<text x="${x + 8}" y="${y + 15}" font-weight="bold">${esc(ap.name.slice(0, 22))}</text>`);
    const kind = String(ap.kind ?? "").replace(/^localservice\./, "");
    parts.push(
      `<text x="${x + 8}" y="${y + 29}" fill="#444">${esc(kind.slice(0, 22))}${
        ap.vm ? ` · VM ${esc(String(ap.vm).slice(0, 12))}` : ""
      }</text>`,
    );
    parts.push(
      `<text x="${x + 8}" y="${y + 44}" fill="#666">in ${shortNumber(packetsIn)} · out ${
        shortNumber(packetsOut)
      }${state ? ` · ${esc(String(state).slice(0, 14))}` : ""}</text>`,
    );
    parts.push(`</g>`);
    (ap.inputs ?? []).forEach((p, k) => {
      if (!p.from || p.from === "link") return;
      const ly = y + 12 + k * 13;
      parts.push(
        `<text class="input" x="${x - 6}" y="${ly}" text-anchor="end" fill="#1f6f3f">${
          esc(String(p.from).replace("DIPRONN_INPUT", "IN").slice(0, 24))
        } →</text>`,
      );
    });
    let line = 0;
    for (const o of ap.outputs ?? []) {
      for (const to of o.to ?? []) {
        const t = String(to);
        if (!t.startsWith("DIPRONN_OUTPUT") && !t.startsWith("link(")) continue;
        const ly = y + 12 + line++ * 13;
        parts.push(
          `<text class="output" x="${x + BOX.w + 6}" y="${ly}" fill="#8a4b08">→ ${
            esc(t.replace("DIPRONN_OUTPUT", "OUT").slice(0, 28))
          }</text>`,
        );
      }
    }
  }
  parts.push(`</svg>`);
  return parts.join("");
}
