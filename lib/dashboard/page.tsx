/**
 * The dashboard at GET / of the status address: one server-rendered page (Hono JSX) with a section per running role,
 * built from the same figures as /status, and charts of the last minutes from the box's History (SVG drawn on the
 * server with d3, lib/dashboard/charts.ts). Nothing is fetched from elsewhere: the page's style and its one small
 * script are in the page. The script reloads the live part (GET /dashboard/main) every two seconds and sends the
 * scheduler's drain/maint/ready buttons to the existing API with the token the operator types in; the token stays in
 * the browser tab (sessionStorage) and is never part of a page.
 */
import type { Hono } from "hono";
import { raw } from "hono/html";
import type { Child } from "hono/jsx";
import { lineChart, type Series, shortNumber } from "./charts.ts";
import { sessionGraph } from "./graph.ts";
import { type History, keyPart } from "./history.ts";

export interface DashboardDeps {
  /** The box's /status document (name, version, uptime, roles). */
  readonly status: () => Record<string, unknown>;
  readonly history: History;
}

type Obj = Record<string, unknown>;
const obj = (v: unknown): Obj => (v && typeof v === "object" && !Array.isArray(v) ? v as Obj : {});
const arr = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);
const text = (v: unknown): string => (v === null || v === undefined ? "" : String(v));
const n = (v: unknown): string => (typeof v === "number" && Number.isFinite(v) ? shortNumber(v) : "–");

/** Most rows a table shows (a reflector's participants); the rest are counted. */
const MAX_ROWS = 50;

export function dashboardRoutes(app: Hono, deps: DashboardDeps): void {
  app.get("/", (c) => c.html(<Page deps={deps} />));
  app.get("/dashboard/main", (c) => c.html(<Main deps={deps} />));
}

function Page({ deps }: { deps: DashboardDeps }) {
  const s = deps.status();
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <title>{`${text(s.name)} · edgenode`}</title>
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        {/* No icon to fetch: the page asks for nothing it does not hold. */}
        <link rel="icon" href="data:," />
        <style>{raw(STYLE)}</style>
      </head>
      <body>
        <header>
          <h1>
            {text(s.name)} <small>edgenode {text(s.version)}</small>
          </h1>
          <form id="token-form" autocomplete="off">
            <label>
              API token{" "}
              <input id="token" type="password" placeholder="needed for the buttons" autocomplete="off" />
            </label>
            <button type="submit">Use</button>
            <span id="token-state"></span>
          </form>
        </header>
        <p id="notice" role="status"></p>
        <main id="main">
          <Main deps={deps} />
        </main>
        <footer>
          <label>
            <input id="live" type="checkbox" checked /> live
          </label>{" "}
          · updated <span id="updated">at load</span> · <a href="/status">/status</a> ·{" "}
          <a href="/metrics">/metrics</a>
        </footer>
        <script>{raw(SCRIPT)}</script>
      </body>
    </html>
  );
}

function Main({ deps }: { deps: DashboardDeps }) {
  const s = deps.status();
  const roles = obj(s.roles);
  const h = deps.history;
  return (
    <div>
      <p class="summary">
        Up {n(s.uptime_seconds)} s · roles: {Object.keys(roles).join(", ") || "none"} · history:{" "}
        {h.status().series} series
        <Reload config={obj(obj(s.process).config)} />
      </p>
      {roles.scheduler ? <Scheduler status={obj(roles.scheduler)} history={h} /> : null}
      {roles.relay ? <Relay status={obj(roles.relay)} history={h} /> : null}
      {roles.node ? <Node status={obj(roles.node)} history={h} /> : null}
      {roles.agent ? <Agent status={obj(roles.agent)} /> : null}
    </div>
  );
}

/** The config generation and the last reload: refused ones stand out, with their first error. */
function Reload({ config }: { config: Record<string, unknown> }) {
  if (config.generation === undefined) return null;
  const last = config.last_reload ? obj(config.last_reload) : null;
  const errors = (last?.errors ?? []) as unknown[];
  return (
    <span>
      {` · config generation ${n(config.generation)}`}
      {last
        ? (
          <span class={last.ok ? "state ok" : "state bad"}>
            {` · last reload ${last.ok ? "applied" : "refused"} (${text(last.trigger)}, ${text(last.at)})`}
            {errors.length
              ? `: ${text(errors[0])}${errors.length > 1 ? ` (+${errors.length - 1} more)` : ""}`
              : ""}
          </span>
        )
        : null}
    </span>
  );
}

function Chart(props: { series: Series[]; title: string; yLabel: string; id: string }) {
  return (
    <div class="chart-box">
      {raw(lineChart(props.series, { title: props.title, x: "time", yLabel: props.yLabel, id: props.id }))}
    </div>
  );
}

const stateClass = (state: string) =>
  ["up", "running", "ready"].includes(state)
    ? "ok"
    : ["down", "failed"].includes(state)
    ? "bad"
    : ["drain", "backoff", "starting", "warming"].includes(state)
    ? "warn"
    : "idle";

function State({ value }: { value: unknown }) {
  const v = text(value);
  return <span class={`state ${stateClass(v)}`}>{v || "–"}</span>;
}

function Scheduler({ status, history }: { status: Obj; history: History }) {
  const services = Object.entries(obj(status.services));
  return (
    <section id="scheduler" class="role">
      <h2>Scheduler</h2>
      {services.length === 0 ? <p>No service.</p> : null}
      {services.map(([name, v]) => {
        const svc = obj(v);
        return (
          <div class="service" data-service={name}>
            <h3>
              {name} <small>{text(svc.listen)} · {text(svc.picker)}</small>
            </h3>
            <p class="summary">
              open {n(svc.open_connections)} · queue {n(svc.queue_length)} · accepted {n(svc.accepted)}{" "}
              · no server {n(svc.no_server)} · refused {n(svc.refused_limit)} · retries {n(svc.retries)}
            </p>
            <table>
              <thead>
                <tr>
                  <th>server</th>
                  <th>state</th>
                  <th>admin</th>
                  <th>weight</th>
                  <th>scaled</th>
                  <th>load</th>
                  <th>active</th>
                  <th>total</th>
                  <th>last check</th>
                  <th>agent</th>
                  <th>failed connects</th>
                  <th></th>
                </tr>
              </thead>
              <tbody>
                {arr(svc.servers).map((x) => {
                  const server = obj(x);
                  const check = obj(server.last_check);
                  const agent = obj(server.last_agent);
                  const key = text(server.server);
                  return (
                    <tr data-server={key}>
                      <td>{key}</td>
                      <td>
                        <State value={server.state} />
                      </td>
                      <td>
                        <State value={server.admin} />
                      </td>
                      <td>{n(server.weight)}</td>
                      <td>{n(server.scaled_weight)}</td>
                      <td>{n(server.load_percent) === "–" ? "–" : `${n(server.load_percent)}%`}</td>
                      <td>{n(server.active)}</td>
                      <td>{n(server.total)}</td>
                      <td title={text(check.detail)}>
                        {check.ok === true ? "ok" : check.ok === false ? "failed" : "–"}{" "}
                        {text(check.at).slice(11, 19)}
                      </td>
                      <td title={text(agent.reply ?? agent.detail)}>
                        {text(agent.reply ?? "–").slice(0, 24)}
                      </td>
                      <td>{n(server.failed_connects)}</td>
                      <td class="actions">
                        {["ready", "drain", "maint"].map((state) => (
                          <button
                            type="button"
                            data-action="admin"
                            data-state={state}
                            data-service={name}
                            data-server={key}
                          >
                            {state}
                          </button>
                        ))}
                      </td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
            <div class="charts">
              <Chart
                id={`chart-scheduler-${name}`}
                title={`${name}: connections`}
                yLabel="per second / open"
                series={history.series(`scheduler/${keyPart(name)}/`).filter((x) =>
                  !x.name.startsWith("bits")
                )}
              />
              <Chart
                id={`chart-scheduler-bits-${name}`}
                title={`${name}: traffic`}
                yLabel="bits/s"
                series={history.series(`scheduler/${keyPart(name)}/`).filter((x) =>
                  x.name.startsWith("bits")
                )}
              />
            </div>
          </div>
        );
      })}
    </section>
  );
}

function Relay({ status, history }: { status: Obj; history: History }) {
  const relays = Object.entries(obj(status.relays));
  const reflectors = Object.entries(obj(status.reflectors));
  return (
    <section id="relay" class="role">
      <h2>Relay</h2>
      {relays.length
        ? (
          <table>
            <thead>
              <tr>
                <th>relay</th>
                <th>state</th>
                <th>listen</th>
                <th>packets/s in</th>
                <th>packets/s out</th>
                <th>bits/s in</th>
                <th>bits/s out</th>
                <th>packets in</th>
                <th>packets out</th>
                <th>dropped</th>
                <th>targets</th>
              </tr>
            </thead>
            <tbody>
              {relays.map(([name, v]) => {
                const r = obj(v);
                const k = `relay/${keyPart(name)}/`;
                return (
                  <tr data-relay={name}>
                    <td>{name}</td>
                    <td>
                      <State value={r.state} />
                    </td>
                    <td>{text(r.listen)}</td>
                    <td>{n(history.latest(`${k}packets/s in`))}</td>
                    <td>{n(history.latest(`${k}packets/s out`))}</td>
                    <td>{n(history.latest(`${k}bits/s in`))}</td>
                    <td>{n(history.latest(`${k}bits/s out`))}</td>
                    <td>{n(r.rx_packets)}</td>
                    <td>{n(r.tx_packets)}</td>
                    <td>{n(r.tx_dropped)}</td>
                    <td>{arr(r.targets).length}</td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        )
        : null}
      <div class="charts">
        {relays.map(([name]) => {
          const series = history.series(`relay/${keyPart(name)}/`);
          return (
            <>
              <Chart
                id={`chart-relay-${name}`}
                title={`relay ${name}`}
                yLabel="packets/s"
                series={series.filter((x) => x.name.startsWith("packets"))}
              />
              <Chart
                id={`chart-relay-bits-${name}`}
                title={`relay ${name}: traffic`}
                yLabel="bits/s"
                series={series.filter((x) => x.name.startsWith("bits"))}
              />
              <Chart
                id={`chart-relay-dropped-${name}`}
                title={`relay ${name}: dropped or cut`}
                yLabel="datagrams/s"
                series={series.filter((x) => x.name.startsWith("dropped"))}
              />
            </>
          );
        })}
      </div>
      {reflectors.map(([name, v]) => {
        const r = obj(v);
        const participants = arr(r.participants).map(obj);
        return (
          <div class="reflector" data-reflector={name}>
            <h3>
              reflector {name} <small>data {text(r.data)} · registration {text(r.registration)}</small>{" "}
              <State value={r.state} />
            </h3>
            <p class="summary">
              participants {participants.length} · joins {n(r.joins)} · leaves {n(r.leaves)} · expired{" "}
              {n(r.expired)} · refused {n(r.refused_limit)}
            </p>
            {participants.length
              ? (
                <table>
                  <thead>
                    <tr>
                      <th>participant</th>
                      <th>joined by</th>
                      <th>sent</th>
                      <th>dropped</th>
                      <th>joined</th>
                      <th>idle</th>
                    </tr>
                  </thead>
                  <tbody>
                    {participants.slice(0, MAX_ROWS).map((p) => (
                      <tr>
                        <td>{text(p.address)}</td>
                        <td>{text(p.origin)}</td>
                        <td>{n(p.sent)}</td>
                        <td>{n(p.dropped)}</td>
                        <td>{n(p.joined_seconds_ago)} s ago</td>
                        <td>{n(p.idle_seconds)} s</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              )
              : null}
            {participants.length > MAX_ROWS ? <p>… and {participants.length - MAX_ROWS} more</p> : null}
            <Chart
              id={`chart-reflector-${name}`}
              title={`reflector ${name}`}
              yLabel="packets/s"
              series={history.series(`reflector/${keyPart(name)}/`).filter((x) =>
                x.name.startsWith("packets")
              )}
            />
          </div>
        );
      })}
    </section>
  );
}

function Node({ status, history }: { status: Obj; history: History }) {
  const sessions = Object.entries(obj(status.sessions));
  const budgets = obj(status.budgets);
  return (
    <section id="node" class="role">
      <h2>Node</h2>
      <p class="summary">
        {Object.entries(budgets).map(([k, v]) => `${k} ${n(obj(v).used)} of ${n(obj(v).max)}`).join(" · ")}
        {status.sandbox_processes
          ? ` · sandbox processes ${n(obj(status.sandbox_processes).used)} of ${
            n(obj(status.sandbox_processes).max)
          }`
          : ""}
      </p>
      {sessions.length === 0 ? <p>No session.</p> : null}
      {sessions.map(([name, v]) => {
        const session = obj(v);
        const aps = arr(session.aps).map(obj);
        const k = `session/${keyPart(name)}/`;
        return (
          <div class="session" data-session={name}>
            <h3>
              session {name}{" "}
              <small>{session.use_rtp ? "use_RTP · " : ""}up {n(session.uptime_seconds)} s</small>
            </h3>
            <div class="graph-box">{raw(sessionGraph(session as never))}</div>
            <table>
              <thead>
                <tr>
                  <th>AP</th>
                  <th>kind</th>
                  <th>VM</th>
                  <th>packets/s in</th>
                  <th>packets in</th>
                  <th>packets out</th>
                  <th>errors</th>
                  <th>state and figures</th>
                </tr>
              </thead>
              <tbody>
                {aps.map((ap) => (
                  <tr data-ap={text(ap.name)}>
                    <td>{text(ap.name)}</td>
                    <td>{text(ap.kind)}</td>
                    <td>{text(ap.vm)}</td>
                    <td>
                      {n(
                        history.latest(
                          `ap/${keyPart(name)}/${keyPart(ap.name)}`,
                        ),
                      )}
                    </td>
                    <td>
                      {n(arr(ap.inputs).reduce((t: number, p) => t + (Number(obj(p).packets) || 0), 0))}
                    </td>
                    <td>
                      {n(arr(ap.outputs).reduce((t: number, p) => t + (Number(obj(p).packets) || 0), 0))}
                    </td>
                    <td>{n(ap.errors)}</td>
                    <td>{apFigures(ap)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
            {arr(session.vms).length
              ? (
                <table>
                  <thead>
                    <tr>
                      <th>VM group</th>
                      <th>state</th>
                      <th>APs</th>
                      <th>dropped in/out</th>
                      <th>limits and access</th>
                      <th>sandbox</th>
                    </tr>
                  </thead>
                  <tbody>
                    {arr(session.vms).map(obj).map((vm) => {
                      const sandbox = obj(vm.sandbox);
                      return (
                        <tr data-vm={text(vm.name)}>
                          <td>{text(vm.name)}</td>
                          <td>
                            <State value={vm.state ?? sandbox.state} />
                          </td>
                          <td>{arr(vm.aps).map(text).join(", ")}</td>
                          <td>
                            {n(vm.dropped_in)} / {n(vm.dropped_out)}
                          </td>
                          <td class="limits">{vmLimits(vm)}</td>
                          <td>{vm.sandbox ? sandboxText(sandbox) : "–"}</td>
                        </tr>
                      );
                    })}
                  </tbody>
                </table>
              )
              : null}
            <div class="charts">
              <Chart
                id={`chart-session-${name}`}
                title={`session ${name}`}
                yLabel="packets/s"
                series={history.series(k).filter((x) => !x.name.startsWith("delay"))}
              />
              {history.series(k).some((x) => x.name.startsWith("delay"))
                ? (
                  <Chart
                    id={`chart-session-delay-${name}`}
                    title={`session ${name}: syncer delay`}
                    yLabel="ms"
                    series={history.series(k).filter((x) => x.name.startsWith("delay"))}
                  />
                )
                : null}
            </div>
          </div>
        );
      })}
    </section>
  );
}

/**
 * What bounds a VM group: a sandbox process's limits (heap, memory, handler deadline, datagrams in flight, CPU
 * share), a worker's permissions and the bytes it has in flight.
 */
function vmLimits(vm: Obj): string {
  const parts: string[] = [];
  if (vm.sandbox) parts.push(limitsText(obj(obj(vm.sandbox).limits)));
  if (vm.isolate !== undefined || vm.permissions) {
    const p = obj(vm.permissions);
    parts.push(
      `${text(vm.isolate) || "worker"} · ${
        ["net", "read", "write", "ffi"].map((k) => `${k} ${permission(p[k])}`).join(" · ")
      } · in flight ${n(vm.in_flight_bytes)}B`,
    );
  }
  return parts.join(" · ") || "–";
}

/** A Deno permission as granted: yes, no, or the paths (hosts) it is limited to. */
function permission(v: unknown): string {
  if (v === true) return "yes";
  if (v === false || v === undefined || v === null) return "no";
  return arr(v).map(text).join(", ") || text(v);
}

/** A sandbox's limits; a CPU share (of one core) of 0 is no cap. */
function limitsText(l: Obj): string {
  return `heap ${n(l.heap_mb)} MiB · memory ${n(l.memory_mb)} MiB · deadline ${
    n(l.deadline_ms)
  } ms · in flight ≤ ${n(l.max_in_flight)} batches${
    l.max_in_flight_bytes === undefined ? "" : ` / ${n(l.max_in_flight_bytes)} B`
  } · cpu ${l.cpu_share === 0 ? "not capped" : `${n(l.cpu_share)} of a core`}`;
}

function sandboxText(s: Obj): string {
  const limits = obj(s.limits);
  return `${text(s.state)} · restarts ${n(s.restarts)} · memory ${n(s.memory_bytes)}B of ${
    n(limits.memory_mb)
  } MiB · cpu ${n(s.cpu_ms)} ms · queue ${n(s.queue_depth)}${
    s.last_error ? ` · last error: ${text(s.last_error).slice(0, 120)}` : ""
  }`;
}

/** The figures of an AP's own kind worth a glance: a syncer's delay and offsets, a transcoder's state, a sandbox's. */
function apFigures(ap: Obj): Child {
  const syncer = obj(ap.syncer);
  if (ap.syncer) {
    const inputs = arr(syncer.inputs).map(obj);
    const sum = (key: string) => inputs.reduce((t, i) => t + (Number(i[key]) || 0), 0);
    const dropped = sum("dropped_max_delay") + sum("dropped_cap") + sum("dropped_late") +
      sum("dropped_reorder");
    return `${text(syncer.state)} · D ${n(syncer.delay_ms)} ms · ${
      inputs.map((i) => `${text(i.name)}: ${text(i.alignment)}, offset ${n(i.offset_ms)} ms`).join("; ")
    } · late ${n(sum("late"))} · dropped ${n(dropped)} · released late ${n(syncer.release_late)}`;
  }
  const transcoder = obj(ap.transcoder);
  if (ap.transcoder) {
    const progress = obj(transcoder.progress);
    const ffmpeg = obj(transcoder.ffmpeg);
    return `${text(transcoder.state)}${progress.fps !== undefined ? ` · ${n(progress.fps)} fps` : ""}${
      progress.speed !== undefined ? ` · speed ${text(progress.speed)}` : ""
    }${progress.bitrate_kbps !== undefined ? ` · ${n(progress.bitrate_kbps)} kb/s` : ""}${
      ffmpeg.restarts !== undefined ? ` · restarts ${n(ffmpeg.restarts)}` : ""
    }`;
  }
  if (ap.sandbox) return sandboxText(obj(ap.sandbox));
  const counted = obj(obj(ap.counted).rtp);
  if (ap.counted) return `received ${n(counted.received)} · lost ${n(counted.lost)}`;
  return "";
}

function Agent({ status }: { status: Obj }) {
  const counters = obj(status.counters);
  return (
    <section id="agent" class="role">
      <h2>Agent</h2>
      <p class="summary">
        <State value={status.admin} /> listen {text(status.listen)} · source {text(status.source)}{" "}
        · last reply {text(status.last_reply) || "–"} · weight {n(counters.weight_percent)}% · replies{" "}
        {n(counters.replies)}
        {status.last_error ? ` · last error: ${text(status.last_error)}` : ""}
      </p>
    </section>
  );
}

const STYLE = `
body { font-family: system-ui, sans-serif; margin: 0 1.2em 2em; color: #222; }
header { display: flex; align-items: baseline; justify-content: space-between; flex-wrap: wrap; gap: 1em; }
h1 small, h3 small { font-weight: normal; color: #666; font-size: 0.7em; }
h2 { border-bottom: 2px solid #ddd; margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.4em 0 0.8em; font-size: 0.85em; }
th, td { border: 1px solid #ddd; padding: 2px 6px; text-align: left; white-space: nowrap; }
th { background: #f3f3f3; }
.state { padding: 0 5px; border-radius: 3px; }
.state.ok { background: #d4f4dd; color: #14532d; }
.state.bad { background: #fbd5d5; color: #7f1d1d; }
.state.warn { background: #fde9c8; color: #7c4a03; }
.state.idle { background: #eee; color: #555; }
.summary { color: #444; font-size: 0.9em; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
.graph-box { overflow-x: auto; }
#notice { min-height: 1.2em; color: #14532d; }
#notice.error { color: #7f1d1d; }
button { font-size: 0.85em; }
footer { margin-top: 2em; color: #777; font-size: 0.85em; }
`;

/** The page's script: reloads the live part, keeps the token in the tab, sends the scheduler's buttons. */
const SCRIPT = `
(() => {
  const KEY = "edgenode-token";
  const tokenState = document.getElementById("token-state");
  const notice = document.getElementById("notice");
  const showToken = () => { tokenState.textContent = sessionStorage.getItem(KEY) ? "token set for this tab" : ""; };
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = document.getElementById("token");
    if (input.value) sessionStorage.setItem(KEY, input.value); else sessionStorage.removeItem(KEY);
    input.value = "";
    showToken();
  });
  showToken();
  const say = (text, error) => { notice.textContent = text; notice.className = error ? "error" : ""; };
  async function refresh(always) {
    if (!always && !document.getElementById("live").checked) return;
    try {
      const res = await fetch("/dashboard/main", { cache: "no-store" });
      if (!res.ok) return;
      document.getElementById("main").innerHTML = await res.text();
      document.getElementById("updated").textContent = new Date().toLocaleTimeString();
    } catch (e) { /* the box may be restarting: the next round tries again */ }
  }
  document.addEventListener("click", async (e) => {
    const b = e.target.closest("button[data-action='admin']");
    if (!b) return;
    const token = sessionStorage.getItem(KEY);
    if (!token) { say("Type the API token first: changes need it.", true); return; }
    const url = "/scheduler/services/" + encodeURIComponent(b.dataset.service) + "/servers/" +
      encodeURIComponent(b.dataset.server);
    const res = await fetch(url, {
      method: "POST",
      headers: { "authorization": "Bearer " + token, "content-type": "application/json" },
      body: JSON.stringify({ state: b.dataset.state }),
    });
    const body = await res.json().catch(() => ({}));
    if (res.ok) say(b.dataset.server + " of " + b.dataset.service + ": " + b.dataset.state);
    else say("Refused (" + res.status + "): " + (body.error || res.statusText), true);
    await refresh(true);
  });
  setInterval(refresh, 2000);
})();
`;
