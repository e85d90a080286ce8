/**
 * `--check` reads and checks the files a config names (the scheduler's agent-rules file, the node's boot session
 * programs), reporting their mistakes with their own file:line:col instead of leaving them to the start.
 */
import assert from "node:assert/strict";
import { checkNamedFiles } from "../../lib/cli/check_files.ts";
import { loadConfig } from "../../lib/config/load.ts";
import { builtinRoles } from "../../lib/roles/mod.ts";

const roles = builtinRoles();

async function withFiles<T>(files: Record<string, string>, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "edgenode_check_" });
  try {
    for (const [name, text] of Object.entries(files)) await Deno.writeTextFile(`${dir}/${name}`, text);
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const GOOD = [
  "Project good;",
  `{ AP name="C" ref=localservice.counter; inputs = in(DIPRONN_INPUT(7000)); }`,
  "",
].join("\n");
const BAD = [
  "Project bad;",
  `{ AP name="C" ref=localservice.countr; inputs = in(DIPRONN_INPUT(7000)); }`,
  "",
].join("\n");

async function problems(dir: string, config: string): Promise<string[]> {
  const plan = loadConfig(config, { file: `${dir}/edge.yaml`, roles });
  return (await checkNamedFiles(plan)).map((e) => e.format().replaceAll(`${dir}/`, ""));
}

Deno.test("checkNamedFiles reports a bad boot program at its own line and column", async () => {
  await withFiles({ "good.dipronn": GOOD, "bad.dipronn": BAD }, async (dir) => {
    const node = (files: string[]) =>
      `roles: [node]\nnode:\n  data_dir: ${dir}\n  sessions: [${
        files.map((f) => `${dir}/${f}`).join(", ")
      }]\n`;
    assert.deepEqual(await problems(dir, node(["good.dipronn"])), []);
    const [error] = await problems(dir, node(["good.dipronn", "bad.dipronn"]));
    assert.match(error, /^bad\.dipronn:2:19: Unknown AP kind "localservice\.countr" \(did you mean/);
  });
});

Deno.test("checkNamedFiles checks boot programs against those before them, as the node starts them", async () => {
  await withFiles({ "a.dipronn": GOOD, "b.dipronn": GOOD.replace("good", "other") }, async (dir) => {
    const config =
      `roles: [node]\nnode:\n  data_dir: ${dir}\n  sessions: [${dir}/a.dipronn, ${dir}/b.dipronn]\n`;
    assert.deepEqual(await problems(dir, config), [
      `b.dipronn:2:53: UDP port 7000 of C.in is already used by session good (a.dipronn)`,
    ]);
  });
});

Deno.test("checkNamedFiles reports a bad agent-rules file at its own line and column", async () => {
  const rules =
    "TELNET | 10.10.10.101 | 7070 | 7070 | 0 | * | 10.10.10.1\nFTP | 10.10.10.101 | 21 | 21 | 0 | * | 10.0.0.1\n";
  await withFiles({ "rules": rules }, async (dir) => {
    const [error, ...more] = await problems(dir, `roles: [scheduler]\nscheduler:\n  rules: rules\n`);
    assert.match(error, /^rules:2:1: /);
    assert.deepEqual(more, []);
  });
});

Deno.test("checkNamedFiles names a file it cannot read by its config key, at that key's place", async () => {
  await withFiles({ "a.dipronn": GOOD }, async (dir) => {
    const config = `roles: [node, scheduler]\nnode:\n  sessions:\n    - ${dir}/a.dipronn\n` +
      `    - ${dir}/missing.dipronn\nscheduler:\n  rules: ${dir}/no-rules\n`;
    assert.deepEqual(await problems(dir, config), [
      `edge.yaml:7:10: scheduler.rules: Cannot read agent-rules file "no-rules": no such file`,
      `edge.yaml:5:7: node.sessions[1]: Cannot read program "missing.dipronn": no such file`,
    ]);
  });
});

Deno.test("checkNamedFiles reads the cluster token file as the start would, and names its key's place", async () => {
  await withFiles({ "short": "12345\n", "good": "0123456789abcdef0123\n" }, async (dir) => {
    const config = (file: string) =>
      `roles: [node]\nnode:\n  data_dir: ${dir}\n  cluster:\n    name: a\n    token_file: ${dir}/${file}\n` +
      `    data: 127.0.0.1:7400\n    peers: [{name: b, api: "127.0.0.1:8081", data: "127.0.0.1:7401"}]\n`;
    assert.deepEqual(await problems(dir, config("good")), []);
    const [short] = await problems(dir, config("short"));
    assert.match(
      short,
      /^edge\.yaml:6:17: node\.cluster\.token_file: Cannot use the cluster token of .*short: it has 5 characters, at least 16/,
    );
    // A reload does not read it (node.cluster waits for the next start; a boot-time secret may be gone).
    const reloaded = loadConfig(config("missing"), { file: `${dir}/edge.yaml`, roles });
    assert.deepEqual(await checkNamedFiles(reloaded, undefined, { clusterToken: false }), []);
    const [missing] = await problems(dir, config("missing"));
    assert.match(
      missing,
      /^edge\.yaml:6:17: node\.cluster\.token_file: Cannot read the cluster token file .*missing/,
    );
  });
});

Deno.test("checkNamedFiles refuses a boot program whose input would receive what an earlier one sends, as the start does", async () => {
  const sends = [
    "Project sender;",
    `{ AP name="F" ref=localservice.forwarder; inputs = in(DIPRONN_INPUT(17299)); outputs = out(DIPRONN_OUTPUT("192.0.2.7:17300")); }`,
    "",
  ].join("\n");
  const receives = GOOD.replace("good", "receiver").replace("7000", "17300");
  await withFiles({ "a.dipronn": sends, "b.dipronn": receives }, async (dir) => {
    const config =
      `roles: [node]\nnode:\n  data_dir: ${dir}\n  sessions: [${dir}/a.dipronn, ${dir}/b.dipronn]\n`;
    const [error, ...more] = await problems(dir, config);
    assert.match(error, /^b\.dipronn:2:\d+: DIPRONN_INPUT\(17300\).*would receive what session sender/);
    assert.deepEqual(more, []);
  });
});

Deno.test("edgenode --check exits 1 naming a bad boot program with line and column", async () => {
  await withFiles({ "bad.dipronn": BAD }, async (dir) => {
    const config = `${dir}/edge.yaml`;
    await Deno.writeTextFile(
      config,
      `roles: [node]\nnode:\n  data_dir: ${dir}\n  sessions: [${dir}/bad.dipronn]\n`,
    );
    const main = new URL("../../main.ts", import.meta.url).pathname;
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-prompt",
        "--allow-read",
        "--allow-env",
        "--allow-sys",
        main,
        "--check",
        "--config",
        config,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const err = new TextDecoder().decode(stderr);
    assert.equal(code, 1, err);
    assert.equal(new TextDecoder().decode(stdout), "");
    assert.match(err, new RegExp(`^${dir}/bad\\.dipronn:2:19: Unknown AP kind "localservice\\.countr"`));
  });
});
