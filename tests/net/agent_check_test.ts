import assert from "node:assert/strict";
import {
  type AgentReplyFields,
  formatAgentReply,
  MAX_AGENT_REPLY,
  parseAgentReply,
} from "../../lib/net/agent_check.ts";

Deno.test("parseAgentReply reads every kind of word", () => {
  assert.deepEqual(parseAgentReply("75%\n"), { weightPercent: 75, problems: [] });
  assert.deepEqual(parseAgentReply("maxconn:30\n"), { maxconn: 30, problems: [] });
  for (const admin of ["ready", "drain", "maint"] as const) {
    assert.deepEqual(parseAgentReply(`${admin}\n`), { admin, problems: [] });
  }
  for (const op of ["up", "down", "fail", "stopped"] as const) {
    assert.deepEqual(parseAgentReply(`${op}\n`), { op, problems: [] });
  }
  assert.deepEqual(parseAgentReply("down #disk full\n"), {
    op: "down",
    description: "disk full",
    problems: [],
  });
});

Deno.test("parseAgentReply takes the words in any order, case and separator", () => {
  const want = { weightPercent: 42, maxconn: 7, admin: "drain", op: "up", problems: [] };
  for (
    const line of [
      "42% maxconn:7 drain up",
      "up drain maxconn:7 42%",
      "UP,Drain,MAXCONN:7,42%",
      "\t drain\t,\tup  42%,,maxconn:7 ,",
      "maxconn:7 up 42% drain\r\n",
    ]
  ) {
    assert.deepEqual(parseAgentReply(line), want, line);
  }
});

Deno.test("parseAgentReply reads an empty line as no change", () => {
  assert.deepEqual(parseAgentReply("\n"), { problems: [] });
  assert.deepEqual(parseAgentReply(" , \t"), { problems: [] });
});

Deno.test("parseAgentReply keeps the last word of a kind and says so", () => {
  const r = parseAgentReply("drain 10% ready 20%\n");
  assert.equal(r.admin, "ready");
  assert.equal(r.weightPercent, 20);
  assert.deepEqual(r.problems, [
    'Repeated administrative state "drain" then "ready": the last counts',
    'Repeated weight "10%" then "20%": the last counts',
  ]);
});

Deno.test("parseAgentReply ignores malformed words and reports each", () => {
  const r = parseAgentReply("150x% maxconn:abc maxconn:-1 busy failed 50% down#oops ready\n");
  assert.deepEqual({ ...r, problems: undefined }, {
    weightPercent: 50,
    admin: "ready",
    problems: undefined,
  });
  assert.deepEqual(r.problems, [
    'Ignored weight "150x%": expected digits then "%", such as 75%',
    'Ignored "maxconn:abc": expected maxconn:N with N in 0..2147483647',
    'Ignored "maxconn:-1": expected maxconn:N with N in 0..2147483647',
    'Ignored unknown word "busy"',
    'Ignored unknown word "failed"',
    'Ignored unknown word "down#oops" (put a space before "#" to start a description)',
  ]);
});

Deno.test("parseAgentReply reads a percentage over HAProxy's bound as the bound", () => {
  const r = parseAgentReply("30000%");
  assert.equal(r.weightPercent, 25600);
  assert.deepEqual(r.problems, ['Weight "30000%" is over 25600%; read as 25600%']);
  assert.deepEqual(parseAgentReply("0%"), { weightPercent: 0, problems: [] });
  assert.deepEqual(parseAgentReply("25600%"), { weightPercent: 25600, problems: [] });
});

Deno.test("parseAgentReply ignores words with NUL, control or non-ASCII characters", () => {
  const r = parseAgentReply("75%\0 dräin up\x01 maint");
  assert.deepEqual({ admin: r.admin, weight: r.weightPercent, op: r.op }, {
    admin: "maint",
    weight: undefined,
    op: undefined,
  });
  assert.deepEqual(r.problems, [
    'Ignored word "75%\\u0000": it holds a non-ASCII or control character',
    'Ignored word "dräin": it holds a non-ASCII or control character',
    'Ignored word "up\\u0001": it holds a non-ASCII or control character',
  ]);
});

Deno.test("parseAgentReply takes the rest of the line after # as text", () => {
  const r = parseAgentReply("down # full, 90% used #2 \t\n");
  assert.deepEqual(r, { op: "down", description: "full, 90% used #2", problems: [] });
  const dirty = parseAgentReply("down #caf\u00e9\0");
  assert.equal(dirty.description, "caf??");
  assert.deepEqual(dirty.problems, ['Replaced non-ASCII or control characters in the description with "?"']);
});

Deno.test("parseAgentReply reads only the first line", () => {
  const r = parseAgentReply("75%\ndrain\n");
  assert.equal(r.weightPercent, 75);
  assert.equal(r.admin, undefined);
  assert.deepEqual(r.problems, ["Ignored the text after the first line"]);
});

Deno.test("parseAgentReply ignores a line over the length limit", () => {
  const long = "75% drain #" + "x".repeat(MAX_AGENT_REPLY);
  assert.deepEqual(parseAgentReply(long + "\n"), {
    problems: [`Reply of ${long.length} characters is over the ${MAX_AGENT_REPLY} limit; ignored`],
  });
  const fits = "75% #" + "x".repeat(MAX_AGENT_REPLY - 5);
  assert.equal(parseAgentReply(fits).weightPercent, 75);
});

Deno.test("formatAgentReply writes a line HAProxy reads", () => {
  assert.equal(formatAgentReply({ weightPercent: 75, admin: "ready" }), "75% ready\n");
  assert.equal(
    formatAgentReply({ op: "down", admin: "drain", maxconn: 30, description: "agent command failed" }),
    "maxconn:30 drain down #agent command failed\n",
  );
  assert.equal(formatAgentReply({}), "\n");
  assert.equal(formatAgentReply({ description: "note" }), "#note\n");
});

Deno.test("formatAgentReply makes the description printable and keeps the line within the limit", () => {
  assert.equal(formatAgentReply({ op: "down", description: "a\nb\u00e9" }), "down #a?b?\n");
  const line = formatAgentReply({ op: "down", description: "y".repeat(5000) });
  assert.equal(line.length, MAX_AGENT_REPLY + 1);
  assert.deepEqual(parseAgentReply(line).problems, []);
});

Deno.test("formatAgentReply refuses numbers out of range", () => {
  assert.throws(() => formatAgentReply({ weightPercent: 1.5 }), RangeError);
  assert.throws(() => formatAgentReply({ weightPercent: -1 }), RangeError);
  assert.throws(() => formatAgentReply({ weightPercent: 25601 }), RangeError);
  assert.throws(() => formatAgentReply({ maxconn: 2 ** 31 }), RangeError);
});

Deno.test("formatAgentReply then parseAgentReply gives the fields back", () => {
  const cases: AgentReplyFields[] = [
    {},
    { weightPercent: 0 },
    { weightPercent: 100, admin: "ready" },
    {
      weightPercent: 25600,
      maxconn: 0,
      admin: "maint",
      op: "stopped",
      description: "upgrade, back at 10:00",
    },
    { op: "fail", description: "#hash # inside" },
    { maxconn: 2 ** 31 - 1, op: "up" },
  ];
  for (const fields of cases) {
    assert.deepEqual(parseAgentReply(formatAgentReply(fields)), { ...fields, problems: [] });
  }
});
