/**
 * Scheduler failover with a backup box, in network namespaces (root, as CI runs): a client, two scheduler boxes and
 * two HTTP servers on one LAN (a kernel bridge), a VIP the schedulers share through VRRP with keepalived from Debian
 * (sched1 MASTER, sched2 BACKUP, each tracking its edgenode's GET /healthz with curl), edgenode's scheduler on each
 * box listening on the VIP whether it holds it or not (net.ipv4.ip_nonlocal_bind=1), and the two boxes sharing
 * persistence and runtime server state over their status APIs (scheduler.share).
 *
 * "The master box dies" here means: every process in sched1's namespace (edgenode, keepalived and keepalived's VRRP
 * child) gets SIGKILL at one instant, and the box's network link goes down right after, as when a box loses power:
 * no goodbye advertisement (priority 0) is sent, and the dead box answers no ARP for the VIP it still has configured.
 *
 * The boxes run the shipped keepalived configs (config/keepalived/, only interface, VIP, interval and curl's path
 * changed). A second case has only edgenode die on the master (SIGKILL), its keepalived living on: keepalived's check
 * edgenode_alive (/healthz?role=scheduler&level=listening) fails twice (interval 1 s), the master goes to FAULT, gives
 * the VIP up and says so (priority 0), and the backup takes over at once. A third has the master lose its servers
 * (unreachable routes to both, in its namespace only): its health checks take them down, its /healthz answers 503 "no
 * healthy server", the check edgenode_servers lowers its priority below the backup's, and the backup takes the VIP
 * when its master-down timer ends (it ignores a master of lower priority).
 *
 * A client loop opens a new connection to the VIP every 20 ms (each given up after 500 ms, before TCP's first SYN
 * retransmission) while the master dies; the time from the kill to the first new connection answered through the
 * backup is measured and printed, with the failed attempts. Runs once with keepalived's default advertisement
 * interval (1 s) and once with a short one (0.1 s, VRRPv3). Affinity: eight client addresses each get a server before
 * the failover and must get the same one after it (asked in the reverse order, so the backup's own round robin would
 * hand most of them the other server). Timings are printed, not asserted: the takeover and the affinity are.
 */
import assert from "node:assert/strict";
import denoJson from "../../deno.json" with { type: "json" };
import { NetnsBed, sweepStaleNamespaces } from "../_support/netns.ts";
import { requireTools } from "../_support/tools.ts";
import { poll, until } from "../_support/until.ts";

const ROOT = new URL("../../", import.meta.url).pathname;
/** The edgenode task's `deno run ...` arguments (as tests/e2e/_process.ts starts edgenode), without `deno`. */
const RUN_ARGS = denoJson.tasks.edgenode.trim().split(/\s+/).slice(1);
const SUBNET = "10.79.0";
const VIP = `${SUBNET}.100`;
const TOKEN = "failover-test-token-0123456789";
/** Extra client addresses for the affinity check, each its own persistence entry. */
const CLIENT_IPS = [51, 52, 53, 54, 55, 56, 57, 58].map((i) => `${SUBNET}.${i}`);
const NAMES = ["client", "sched1", "sched2", "server1", "server2"] as const;
const LOOP_EVERY_MS = 20;
const LOOP_TIMEOUT_MS = 500;

const now = () => performance.timeOrigin + performance.now();

/** A process in the bed whose stdout and stderr lines are kept, each with when it was read. */
class Output {
  readonly lines: { at: number; text: string }[] = [];
  readonly done: Promise<void>;
  constructor(readonly label: string, readonly child: Deno.ChildProcess) {
    this.done = Promise.all([this.#read(child.stdout), this.#read(child.stderr)]).then(() => {});
  }
  async #read(stream: ReadableStream<Uint8Array>): Promise<void> {
    let rest = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop()!;
      const at = now();
      for (const text of parts) this.lines.push({ at, text });
    }
    if (rest) this.lines.push({ at: now(), text: rest });
  }
  find(pattern: RegExp): { at: number; text: string } | undefined {
    return this.lines.find((l) => pattern.test(l.text));
  }
  async waitFor(pattern: RegExp, ms = 20_000): Promise<{ at: number; text: string }> {
    try {
      return await poll(`${this.label}: ${pattern}`, () => this.find(pattern), ms, 20);
    } catch (error) {
      throw new Error(`${(error as Error).message}; its output:\n${this.tail()}`);
    }
  }
  tail(n = 30): string {
    return this.lines.slice(-n).map((l) => l.text).join("\n");
  }
}

interface Attempt {
  readonly s: number;
  readonly e: number;
  readonly ok: boolean;
  readonly server?: string;
  /** The scheduler box's address the server saw. */
  readonly via?: string;
  readonly error?: string;
}

/**
 * What fails on the master: the whole box, only its edgenode (keepalived's check finds nothing listening), its way
 * to the servers (edgenode answers /healthz with 503), or nothing: edgenode is stopped as an operator would (SIGTERM;
 * its shutdown.health_grace fails /healthz first, while it still serves).
 */
type Death = "box" | "edgenode" | "servers" | "stop";

interface Figures {
  readonly advertSec: number;
  readonly death: Death;
  readonly takeoverMs: number;
  readonly vrrpMasterMs: number;
  readonly failedAfterKill: number;
  readonly attemptsAfterKill: number;
  readonly affinityHeld: number;
  readonly affinityOf: number;
}

function edgenodeConfig(name: string, peer: string): string {
  return `name: ${name}
roles: [scheduler]
shutdown:
  drain_timeout: 5s
  health_grace: 4s
status:
  listen: 0.0.0.0:8080
  token: ${TOKEN}
scheduler:
  services:
    - name: web
      listen: ${VIP}:80
      picker: roundrobin
      persistence: 5m
      check: { interval: 500ms, timeout: 300ms, rise: 1, fall: 2 }
      servers:
        - { address: ${SUBNET}.4:80 }
        - { address: ${SUBNET}.5:80 }
  share:
    peers: [http://${peer}:8080]
    token: ${TOKEN}
    interval: 100ms
`;
}

/**
 * The shipped keepalived config of `state` (config/keepalived/), with only what this bed needs changed: its
 * interface, the VIP, the advertisement interval and where curl is. A shipped file that no longer has one of those
 * lines fails the test, so the test runs what the README tells operators to run.
 */
function keepalivedConfig(
  o: { state: "MASTER" | "BACKUP"; ifname: string; advertSec: number; curl: string },
): string {
  const file = `${ROOT}config/keepalived/keepalived-${o.state === "MASTER" ? "master" : "backup"}.conf`;
  let text = Deno.readTextFileSync(file);
  const swap = (from: string | RegExp, to: string) => {
    assert.ok(typeof from === "string" ? text.includes(from) : from.test(text), `${file} has no ${from}`);
    text = text.replace(from, to);
  };
  swap(/^ {2}interface eth0$/m, `  interface ${o.ifname}`);
  swap(/^ {4}10\.0\.0\.1\/24 dev eth0$/m, `    ${VIP}/24`);
  swap(/^ {2}advert_int 1$/m, `  advert_int ${o.advertSec}`);
  swap("/usr/bin/curl", o.curl);
  return text;
}

async function failover(advertSec: number, death: Death, tools: Record<string, string>): Promise<Figures> {
  await using bed = await NetnsBed.create({ names: NAMES, link: "bridge", subnet: SUBNET });
  const dir = await Deno.makeTempDir({ prefix: "edgenode-failover-" });
  const outputs: Output[] = [];
  const start = (name: string, label: string, cmd: string, args: string[]) => {
    const out = new Output(
      label,
      bed.spawn(name, cmd, args, { stdout: "piped", stderr: "piped", cwd: ROOT }),
    );
    outputs.push(out);
    return out;
  };
  const deno = Deno.execPath();
  try {
    const client = bed.node("client");
    for (const ip of CLIENT_IPS) {
      await bed.run("client", tools.ip, ["addr", "add", `${ip}/24`, "dev", client.ifname]);
    }
    for (const s of ["sched1", "sched2"]) await bed.sysctl(s, "net.ipv4.ip_nonlocal_bind", "1");

    const servers = ["server1", "server2"].map((s) =>
      start(s, s, deno, [
        "run",
        "--allow-net",
        `${ROOT}tests/failover/_http_server.ts`,
        s,
        bed.node(s).address,
        "80",
      ])
    );
    const sched = new Map<string, { edgenode: Output; keepalived?: Output }>();
    for (const [name, peer] of [["sched1", "sched2"], ["sched2", "sched1"]] as const) {
      const config = `${dir}/${name}.yaml`;
      await Deno.writeTextFile(config, edgenodeConfig(name, bed.node(peer).address));
      sched.set(name, { edgenode: start(name, `edgenode ${name}`, deno, [...RUN_ARGS, "--config", config]) });
    }
    for (const s of servers) await s.waitFor(/^listening$/);
    for (const { edgenode } of sched.values()) {
      await edgenode.waitFor(/component=status msg=listening addr=0\.0\.0\.0:8080/, 30_000);
    }
    // Each box is healthy (its service listens on the VIP it does not hold yet, its servers are up).
    for (const name of ["sched1", "sched2"]) {
      const h = await bed.run(name, tools.curl, ["-sS", "--max-time", "2", "http://127.0.0.1:8080/healthz"]);
      assert.equal(h.stdout, "ok\n", `${name} /healthz: ${h.stdout}${h.stderr}`);
    }

    for (const [name, state] of [["sched1", "MASTER"], ["sched2", "BACKUP"]] as const) {
      const conf = `${dir}/keepalived-${name}.conf`;
      await Deno.writeTextFile(
        conf,
        keepalivedConfig({ state, ifname: bed.node(name).ifname, advertSec, curl: tools.curl }),
      );
      sched.get(name)!.keepalived = start(name, `keepalived ${name}`, tools.keepalived, [
        "--dont-fork",
        "--log-console",
        "--log-detail",
        "--no-syslog",
        "--vrrp",
        "--use-file",
        conf,
        "--pid",
        `${dir}/${name}.pid`,
        "--vrrp_pid",
        `${dir}/${name}-vrrp.pid`,
      ]);
      // The master first: a backup started alongside it would take the VIP for a moment if the master's first
      // advertisement came later than the backup's master-down interval (seen here once, on a busy machine).
      await sched.get(name)!.keepalived!.waitFor(new RegExp(`Entering ${state} STATE`));
    }
    const vipOn = async (name: string) =>
      (await bed.run(name, tools.ip, ["-4", "-o", "addr", "show"])).stdout.includes(`inet ${VIP}/`);
    await until("the VIP on sched1", () => vipOn("sched1"));

    // The client loop, through the master.
    const loop = start("client", "client loop", deno, [
      "run",
      "--allow-net",
      `${ROOT}tests/failover/_conn_loop.ts`,
      VIP,
      "80",
      String(LOOP_EVERY_MS),
      String(LOOP_TIMEOUT_MS),
    ]);
    const attempts = () =>
      loop.lines.filter((l) => l.text.startsWith("{")).map((l) => JSON.parse(l.text) as Attempt);
    await until("the client loop through the master", () => attempts().filter((a) => a.ok).length >= 10);

    // Affinity, before: each client address gets a server from the master (round robin spreads them).
    const ask = async (ips: readonly string[]) => {
      const script = ips.map((ip) =>
        `printf '%s ' ${ip}; ${tools.curl} -sS --max-time 2 --interface ${ip} http://${VIP}/ || echo FAILED`
      ).join("; ");
      const out = await bed.run("client", "sh", ["-c", script]);
      // Lines of "client server via".
      return new Map(out.stdout.trim().split("\n").map((l) => l.split(" ").slice(0, 2) as [string, string]));
    };
    const before = await ask(CLIENT_IPS);
    assert.deepEqual(new Set(before.values()), new Set(["server1", "server2"]), JSON.stringify([...before]));
    // A runtime change on the master: server2's weight, set over sched1's API.
    const set = await bed.run("client", tools.curl, [
      "-sS",
      "-X",
      "POST",
      "-H",
      `authorization: Bearer ${TOKEN}`,
      "-d",
      '{"weight": 7}',
      `http://${bed.node("sched1").address}:8080/scheduler/services/web/servers/${SUBNET}.5:80`,
    ]);
    assert.match(set.stdout, /"weight":7/);
    // The backup has learnt every client and the weight before the master dies.
    const backupWeb = async () => {
      const out = await bed.run("client", tools.curl, [
        "-sS",
        "--max-time",
        "2",
        `http://${bed.node("sched2").address}:8080/status`,
      ]);
      return JSON.parse(out.stdout).roles.scheduler.services.web as {
        persistence_entries: number;
        servers: { server: string; weight: number }[];
      };
    };
    await until(
      "the backup holding the master's persistence and weight",
      async () => {
        const web = await backupWeb();
        return web.persistence_entries >= CLIENT_IPS.length + 1 &&
          web.servers.find((s) => s.server === `${SUBNET}.5:80`)?.weight === 7;
      },
      10_000,
      100,
    );
    const masterAddress = bed.node("sched1").address;
    assert.ok(
      attempts().every((a) => !a.ok || a.via === masterAddress),
      "before the failure, the master serves",
    );
    const loopServer = attempts().findLast((a) => a.ok)!.server;

    // Only a settled pair (sched2 last said BACKUP, the VIP on sched1) is a fair start for the measurement.
    const lastState = (o: Output) => o.lines.findLast((l) => /Entering \w+ STATE/.test(l.text))?.text ?? "";
    await until(
      "sched2 in BACKUP",
      () => /Entering BACKUP STATE/.test(lastState(sched.get("sched2")!.keepalived!)),
    );
    assert.ok(await vipOn("sched1") && !await vipOn("sched2"), "the VIP on sched1 only");

    // The master box dies, or only its edgenode.
    const victims = death === "box"
      ? await bed.pids("sched1")
      : death === "edgenode" || death === "stop"
      ? [sched.get("sched1")!.edgenode.child.pid]
      : [];
    const t0 = now();
    if (death === "servers") {
      // Both at once (.4 and .5 are one /31): with one route at a time, a client whose server failed first could be
      // moved by the master to the other one in between, and rightly keep that one after the failover.
      assert.deepEqual([bed.node("server1").address, bed.node("server2").address], [
        `${SUBNET}.4`,
        `${SUBNET}.5`,
      ]);
      await bed.run("sched1", tools.ip, ["route", "add", "unreachable", `${SUBNET}.4/31`]);
    }
    for (const pid of victims) {
      try {
        Deno.kill(pid, death === "stop" ? "SIGTERM" : "SIGKILL");
      } catch {
        // Gone already.
      }
    }
    if (death === "box") {
      await new Deno.Command(tools.ip, {
        args: ["-n", bed.node("sched1").netns, "link", "set", bed.node("sched1").ifname, "down"],
      }).output();
    }

    const backup = bed.node("sched2").address;
    const after = () => attempts().filter((a) => a.s >= t0 && a.ok && a.via === backup);
    await until("a new connection through the backup", () => after().length > 0, 20_000);
    await until("the backup serving steadily", () => after().length >= 20, 10_000);
    const firstOk = after().reduce((x, y) => (y.e < x.e ? y : x));
    const backupKeepalived = sched.get("sched2")!.keepalived!;
    const becameMaster = await poll(
      "keepalived on sched2 entering MASTER after the kill",
      () => backupKeepalived.lines.find((l) => l.at >= t0 && /Entering MASTER STATE/.test(l.text)),
    );
    const transitions = backupKeepalived.lines.filter((l) => /Entering \w+ STATE/.test(l.text))
      .map((l) => `${/Entering (\w+) STATE/.exec(l.text)![1]} ${(l.at - t0).toFixed(0)} ms`);
    console.log(`keepalived on sched2, relative to the kill: ${transitions.join(", ")}`);
    assert.ok(await vipOn("sched2"), "the VIP moved to sched2");
    if (death !== "box") {
      // keepalived on the master saw its check fail: with edgenode gone it went to FAULT; with its servers gone its
      // priority fell below the backup's and it stood down.
      await sched.get("sched1")!.keepalived!.waitFor(
        death === "servers" ? /Entering BACKUP STATE/ : /Entering FAULT STATE/,
      );
      assert.ok(!await vipOn("sched1"), "the master gave the VIP up");
    }
    if (death === "servers") {
      const h = await bed.run("sched1", tools.curl, [
        "-sS",
        "--max-time",
        "2",
        "http://127.0.0.1:8080/healthz",
      ]);
      assert.equal(h.stdout, "scheduler: service web: no healthy server\n");
    }
    // Every attempt that ended after the kill, the ones in flight at the kill included.
    // The outage: attempts in flight at the failure or started after it, up to the first one the backup answered.
    const ended = attempts().filter((a) => a.e >= t0 && a.s <= firstOk.s);
    const failed = ended.filter((a) => !a.ok);

    const loopAfter = after().at(-1)!.server;
    assert.equal(loopAfter, loopServer, "the looping client kept its server");
    const afterMap = await ask([...CLIENT_IPS].reverse());
    let held = 0;
    for (const ip of CLIENT_IPS) if (afterMap.get(ip) === before.get(ip)) held++;
    assert.deepEqual(
      [...CLIENT_IPS].map((ip) => afterMap.get(ip)),
      [...CLIENT_IPS].map((ip) => before.get(ip)),
      "each client keeps its server through the failover",
    );
    return {
      advertSec,
      death,
      takeoverMs: firstOk.e - t0,
      vrrpMasterMs: becameMaster.at - t0,
      failedAfterKill: failed.length,
      attemptsAfterKill: ended.length,
      affinityHeld: held + 1,
      affinityOf: CLIENT_IPS.length + 1,
    };
  } catch (error) {
    for (const o of outputs) console.error(`--- ${o.label}:\n${o.tail(15)}`);
    throw error;
  } finally {
    await bed[Symbol.asyncDispose]();
    await Promise.all(outputs.map((o) => o.done));
    await Deno.remove(dir, { recursive: true });
  }
}

function report(f: Figures): void {
  const what = FAILURES[f.death];
  console.log(
    `failover, advert_int ${f.advertSec} s, ${what}: new connections through the backup after ` +
      `${f.takeoverMs.toFixed(0)} ms (keepalived on the backup logged MASTER at ~${
        f.vrrpMasterMs.toFixed(0)
      } ms); ` +
      `${f.failedAfterKill} of ${f.attemptsAfterKill} connection attempts failed meanwhile (one every ` +
      `${LOOP_EVERY_MS} ms, ${LOOP_TIMEOUT_MS} ms timeout); affinity held for ${f.affinityHeld}/${f.affinityOf} clients`,
  );
}

const RUNS = Number(Deno.env.get("FAILOVER_RUNS") ?? "1");
const CASES: readonly [number, Death][] = [
  [1, "box"],
  [0.1, "box"],
  [1, "edgenode"],
  [1, "servers"],
  [1, "stop"],
];
const FAILURES: Record<Death, string> = {
  box: "the master box died",
  edgenode: "edgenode on the master died",
  servers: "the master lost its servers (/healthz 503)",
  stop: "edgenode on the master stopped (SIGTERM, health_grace 4 s)",
};

Deno.test("the backup scheduler takes the VIP when the master dies, and clients keep their servers", async (t) => {
  const tools = await requireTools(
    "the failover test",
    ["ip", "keepalived", "curl"],
    "iproute2, keepalived and curl",
  );
  const stale = await sweepStaleNamespaces();
  if (stale.length) console.log(`removed namespaces of an earlier crashed run: ${stale.join(", ")}`);
  for (const [advertSec, death] of CASES) {
    const what = FAILURES[death];
    await t.step(`advert_int ${advertSec} s, ${what}`, async () => {
      for (let i = 0; i < RUNS; i++) report(await failover(advertSec, death, tools));
    });
  }
});
