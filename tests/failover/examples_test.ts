/** The shipped config/keepalived/ examples: both edgenode configs load, and keepalived's own check takes its files. */
import assert from "node:assert/strict";
import { loadConfig } from "../../lib/config/load.ts";
import { ErrorList } from "../../lib/core/errors.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";
import type { SchedulerSection } from "../../lib/scheduler/config.ts";
import { requireTools } from "../_support/tools.ts";

const DIR = new URL("../../config/keepalived/", import.meta.url);
const roles = builtinRoles();
const env = (name: string) => (name === "EDGENODE_TOKEN" ? "example-token-0123456789" : undefined);

function scheduler(text: string, file: string): SchedulerSection {
  return loadConfig(text, { file, roles, env }).sections.scheduler as SchedulerSection;
}

/** The formatted errors loading `text` gives ("" when it loads). */
function errorsOf(text: string, file: string): string {
  try {
    scheduler(text, file);
    return "";
  } catch (error) {
    assert.ok(error instanceof ErrorList, String(error));
    return error.errors.map((e) => e.format()).join("\n");
  }
}

Deno.test("config/keepalived edgenode examples load and point at each other", async () => {
  const a = scheduler(await Deno.readTextFile(new URL("sched-a.yaml", DIR)), "sched-a.yaml");
  const b = scheduler(await Deno.readTextFile(new URL("sched-b.yaml", DIR)), "sched-b.yaml");
  assert.deepEqual(a.share?.peers, ["http://10.0.0.12:8080"]);
  assert.deepEqual(b.share?.peers, ["http://10.0.0.11:8080"]);
  assert.deepEqual(a.services, b.services, "both boxes serve the same services");
});

Deno.test("scheduler.share is checked: peer URLs, a token, bounds", () => {
  const text = `roles: [scheduler]
scheduler:
  share:
    peers: [ftp://10.0.0.2:8080, http://10.0.0.3]
    token: short
    max_batch: 0
`;
  let lines = "";
  assert.throws(() => scheduler(text, "bad.yaml"), (error) => {
    assert.ok(error instanceof ErrorList);
    lines = error.errors.map((e) => e.format()).join("\n");
    return true;
  });
  assert.match(lines, /bad\.yaml:4:\d+: .*ftp:\/\/10\.0\.0\.2:8080/);
  assert.match(lines, /bad\.yaml:4:\d+: .*http:\/\/10\.0\.0\.3"/);
  assert.match(lines, /bad\.yaml:5:\d+: .*token/);
  assert.match(lines, /bad\.yaml:6:\d+: .*1\.\.10000/);
  const noPeer = `roles: [scheduler]
scheduler:
  share:
    peers: [http://10.0.0.2:8080]
`;
  assert.match(
    errorsOf(noPeer, "nopeer.yaml"),
    /^nopeer\.yaml:4:\d+: scheduler\.share\.token: Expected token/,
  );
  assert.match(
    errorsOf("roles: [scheduler]\nscheduler:\n  share:\n    interval: 1s\n", "empty.yaml"),
    /^empty\.yaml:4:\d+: scheduler\.share\.peers: Expected peers or etcd/,
  );
  const etcdOnly = scheduler(
    "roles: [scheduler]\nscheduler:\n  share:\n    etcd: [http://10.0.0.9:2379]\n",
    "etcd.yaml",
  );
  assert.deepEqual(etcdOnly.share?.etcd, ["http://10.0.0.9:2379"]);
  assert.equal(etcdOnly.share?.token, null);
  assert.equal(etcdOnly.share?.etcd_prefix, "/edgenode/scheduler/share/");
  const none = scheduler("roles: [scheduler]\n", "none.yaml");
  assert.equal(none.share, null, "no share unless configured");
});

Deno.test("keepalived --config-test accepts config/keepalived/*.conf", async () => {
  const { keepalived } = await requireTools("the keepalived example check", ["keepalived"], "keepalived");
  for (const name of ["keepalived-master.conf", "keepalived-backup.conf"]) {
    // keepalived 2.2.7 ends a passed check by SIGTERM to itself (status 143) and a failed one with 5 and the
    // problems on stderr; its own process group keeps that signal away from the test runner.
    const out = await new Deno.Command(keepalived, {
      args: ["--config-test", "--use-file", new URL(name, DIR).pathname],
      stdout: "piped",
      stderr: "piped",
      detached: true,
    }).output();
    const stderr = new TextDecoder().decode(out.stderr).trim();
    assert.equal(stderr, "", `${name}: ${stderr}`);
    assert.notEqual(out.code, 5, name);
  }
});
