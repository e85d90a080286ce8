import assert from "node:assert/strict";
import { PositionedError } from "../../lib/core/errors.ts";
import {
  MAX_ERRORS,
  MAX_LINE_LENGTH,
  MAX_RULES,
  MAX_SERVERS_PER_RULE,
  parseRules,
  type Rule,
  RULE_PROTOCOLS,
  RulesError,
} from "../../lib/scheduler/rules.ts";

const FIXTURES = new URL("../fixtures/", import.meta.url);
const SEED_RULE = "TELNET | 10.10.10.101 | 7070 | 7070 | 0 | * | 10.10.10.10.1 | 10.10.10.10.11  ";
const SEED_LEGEND =
  "Protocol | VIP Address | Virtual Port | Server port | placeholder | placeholder | Server | Server";
const FIXED = "TELNET | 10.0.0.1 | 80 | 80 | 0 | *";

/** The formatted errors of `text`, which must give no rules from its bad lines. */
function errorsOf(text: string, file = "rules"): string[] {
  const { errors } = parseRules(text, file);
  for (const e of errors) assert.ok(e instanceof RulesError && e instanceof PositionedError);
  return errors.map((e) => e.format());
}

/** The rules of `text`, which must have no errors. */
function rulesOf(text: string, file = "rules"): Rule[] {
  const { rules, errors } = parseRules(text, file);
  assert.deepEqual(errors.map((e) => e.format()), []);
  return rules;
}

Deno.test("parseRules reports both five-part servers of the seed's rule at their columns and nothing else", () => {
  const { rules, errors } = parseRules(`${SEED_RULE}\n${SEED_LEGEND}\n`, "agent-rules");
  assert.deepEqual(rules, []);
  assert.deepEqual(errors.map((e) => e.format()), [
    'agent-rules:1:47: Server "10.10.10.10.1" is not a valid IP address (IPv4 has four parts, not 5)',
    'agent-rules:1:63: Server "10.10.10.10.11" is not a valid IP address (IPv4 has four parts, not 5)',
  ]);
  assert.equal(SEED_RULE.indexOf("10.10.10.10.1 ") + 1, 47);
  assert.equal(SEED_RULE.indexOf("10.10.10.10.11") + 1, 63);
  assert.deepEqual([errors[0].line, errors[0].col, errors[0].file], [1, 47, "agent-rules"]);
});

Deno.test("parseRules reads the seed's rule with its servers corrected", () => {
  const text = `TELNET | 10.10.10.101 | 7070 | 7070 | 0 | * | 10.10.10.1 | 10.10.10.11  \n${SEED_LEGEND}\n`;
  assert.deepEqual(rulesOf(text, "agent-rules"), [{
    protocol: "TELNET",
    vip: "10.10.10.101",
    vport: 7070,
    serverPort: 7070,
    servers: [
      { host: "10.10.10.1", pos: { file: "agent-rules", line: 1, col: 47 } },
      { host: "10.10.10.11", pos: { file: "agent-rules", line: 1, col: 60 } },
    ],
    pos: { file: "agent-rules", line: 1, col: 1 },
  }]);
});

Deno.test("parseRules reads the good fixture: comments, legend, HTTP, lower case, tabs, trailing pipe, IPv6", async () => {
  const text = await Deno.readTextFile(new URL("agent-rules", FIXTURES));
  const rules = rulesOf(text, "agent-rules");
  assert.deepEqual(
    rules.map((r) => [r.protocol, r.vip, r.vport, r.serverPort, r.servers.map((s) => s.host), r.pos.line]),
    [
      ["TELNET", "10.10.10.101", 7070, 7070, ["10.10.10.1", "10.10.10.11"], 3],
      ["HTTP", "10.10.10.101", 80, 8080, ["10.10.10.1", "10.10.10.11", "10.10.10.12"], 7],
      ["TELNET", "10.10.10.102", 554, 554, ["10.10.10.21"], 8],
      ["TELNET", "2001:db8::101", 7070, 7070, ["2001:db8::1", "10.10.10.1"], 9],
    ],
  );
  // Line 8 starts with a tab: it counts as one column.
  assert.deepEqual(rules[2].pos, { file: "agent-rules", line: 8, col: 2 });
  assert.deepEqual(rules[2].servers[0].pos, { file: "agent-rules", line: 8, col: 34 });
});

Deno.test("parseRules reports every line of the bad fixture at its field, in file order", async () => {
  const text = await Deno.readTextFile(new URL("agent-rules-bad", FIXTURES));
  const { rules, errors } = parseRules(text, "agent-rules-bad");
  const layout = "(PROTOCOL | VIP | VIRTUAL-PORT | SERVER-PORT | 0 | * | SERVER | SERVER ...)";
  assert.deepEqual(errors.map((e) => e.format()), [
    'agent-rules-bad:2:47: Server "10.10.10.10.1" is not a valid IP address (IPv4 has four parts, not 5)',
    'agent-rules-bad:2:63: Server "10.10.10.10.11" is not a valid IP address (IPv4 has four parts, not 5)',
    'agent-rules-bad:3:1: Unknown protocol "FTP" (known: TELNET, HTTP)',
    'agent-rules-bad:4:10: VIP address "10.10.10.300" is not a valid IP address (part "300" is over 255)',
    "agent-rules-bad:5:25: Virtual port 0 is out of range 1..65535",
    'agent-rules-bad:6:30: Server port "http" is not a whole number (1..65535)',
    'agent-rules-bad:7:35: Placeholder field 5 is "1"; edgenode accepts only "0" there, ' +
    "as its meaning for other values is unknown",
    'agent-rules-bad:8:39: Placeholder field 6 is "any"; edgenode accepts only "*" there, ' +
    "as its meaning for other values is unknown",
    `agent-rules-bad:9:40: Too few fields: missing server ${layout}`,
    "agent-rules-bad:10:56: Empty server field",
    'agent-rules-bad:11:43: Server "web1.example.com" is not a valid IP address ' +
    "(host names are not resolved; write the address)",
    'agent-rules-bad:12:43: Server "10.10.10.1:29" is not a valid IP address ' +
    "(an address field holds no port; the server port is field 4)",
    'agent-rules-bad:13:56: Server "10.10.10.1" is listed twice in this rule (first at column 43)',
    'agent-rules-bad:14:43: Server "2001:db8::g" is not a valid IP address (not valid IPv6)',
    'agent-rules-bad:15:43: Server "0.0.0.0" is the unspecified address: nothing can connect to it',
    `agent-rules-bad:16:1: Not a rule: expected fields separated by "|" ${layout}`,
    "agent-rules-bad:18:8: Duplicate service 10.10.10.101:33: already defined at agent-rules-bad:17:10",
  ]);
  assert.deepEqual(errors[12].related, { file: "agent-rules-bad", line: 13, col: 43 });
  assert.deepEqual(errors[16].related, { file: "agent-rules-bad", line: 17, col: 10 });
  // Only the first of the two duplicate lines is a rule.
  assert.deepEqual(rules.map((r) => r.pos.line), [17]);
});

Deno.test("parseRules names every missing field when a rule is short", () => {
  assert.deepEqual(errorsOf("TELNET | 10.0.0.1 | 80"), [
    'rules:1:23: Too few fields: missing server port, placeholder "0", placeholder "*" and server ' +
    "(PROTOCOL | VIP | VIRTUAL-PORT | SERVER-PORT | 0 | * | SERVER | SERVER ...)",
  ]);
  assert.deepEqual(errorsOf("  TELNET |"), [
    'rules:1:11: Too few fields: missing VIP address, virtual port, server port, placeholder "0", ' +
    'placeholder "*" and server (PROTOCOL | VIP | VIRTUAL-PORT | SERVER-PORT | 0 | * | SERVER | SERVER ...)',
  ]);
  // The fields that are there are still checked.
  assert.deepEqual(errorsOf("TELNET | 10.0.0.300 | 80 | 80"), [
    'rules:1:10: VIP address "10.0.0.300" is not a valid IP address (part "300" is over 255)',
    'rules:1:30: Too few fields: missing placeholder "0", placeholder "*" and server ' +
    "(PROTOCOL | VIP | VIRTUAL-PORT | SERVER-PORT | 0 | * | SERVER | SERVER ...)",
  ]);
});

Deno.test("parseRules reports an empty field by name at the `|` that closes it", () => {
  assert.deepEqual(errorsOf("TELNET |  | 80 | 80 | 0 | * | 10.0.0.2"), [
    "rules:1:11: Empty VIP address field",
  ]);
  assert.deepEqual(errorsOf(" | 10.0.0.1 | 80 |  | 0 | * | 10.0.0.2"), [
    "rules:1:2: Empty protocol field",
    "rules:1:21: Empty server port field",
  ]);
});

Deno.test("parseRules checks ports are whole numbers in 1..65535", () => {
  assert.deepEqual(rulesOf(`TELNET | 10.0.0.1 | 1 | 65535 | 0 | * | 10.0.0.2`)[0].serverPort, 65535);
  assert.deepEqual(errorsOf("TELNET | 10.0.0.1 | 65536 | -1 | 0 | * | 10.0.0.2"), [
    "rules:1:21: Virtual port 65536 is out of range 1..65535",
    'rules:1:29: Server port "-1" is not a whole number (1..65535)',
  ]);
  assert.deepEqual(errorsOf("TELNET | 10.0.0.1 | 8 0 | 1e3 | 0 | * | 10.0.0.2"), [
    'rules:1:21: Virtual port "8 0" is not a whole number (1..65535)',
    'rules:1:27: Server port "1e3" is not a whole number (1..65535)',
  ]);
});

Deno.test("parseRules accepts TELNET and HTTP in any case and lists them for another name", () => {
  assert.deepEqual(RULE_PROTOCOLS.map((p) => p.name), ["TELNET", "HTTP"]);
  assert.ok(Object.isFrozen(RULE_PROTOCOLS));
  const rules = rulesOf(
    `http | 10.0.0.1 | 80 | 80 | 0 | * | 10.0.0.2\nTelnet | 10.0.0.1 | 23 | 23 | 0 | * | 10.0.0.2`,
  );
  assert.deepEqual(rules.map((r) => r.protocol), ["HTTP", "TELNET"]);
  assert.deepEqual(errorsOf("SSL | 10.0.0.1 | 443 | 443 | 0 | * | 10.0.0.2"), [
    'rules:1:1: Unknown protocol "SSL" (known: TELNET, HTTP)',
  ]);
});

Deno.test("parseRules gives the reason an address is not IPv4 or IPv6", () => {
  const reasons = (server: string) =>
    errorsOf(`${FIXED} | ${server}`).map((e) => e.replace(/^rules:1:39: /, ""));
  assert.deepEqual(reasons("10.0.0"), [
    'Server "10.0.0" is not a valid IP address (IPv4 has four parts, not 3)',
  ]);
  assert.deepEqual(reasons("10.0..1"), ['Server "10.0..1" is not a valid IP address (part 3 is empty)']);
  assert.deepEqual(reasons("10.0.0.01"), [
    'Server "10.0.0.01" is not a valid IP address (part "01" has a leading zero)',
  ]);
  assert.deepEqual(reasons("[::1]:80"), [
    'Server "[::1]:80" is not a valid IP address (an address field holds no port; the server port is field 4)',
  ]);
  assert.deepEqual(reasons("1:2:3:4:5:6:7:8:9"), [
    'Server "1:2:3:4:5:6:7:8:9" is not a valid IP address (not valid IPv6)',
  ]);
  assert.deepEqual(reasons("10.0.0.2 10.0.0.3"), [
    'Server "10.0.0.2 10.0.0.3" is not a valid IP address (fields are separated by "|")',
  ]);
  assert.deepEqual(reasons("10.0.0.2 # web"), [
    'Server "10.0.0.2 # web" is not a valid IP address (comments go on their own line)',
  ]);
  assert.deepEqual(reasons("::"), ['Server "::" is the unspecified address: nothing can connect to it']);
  assert.deepEqual(errorsOf("TELNET | 10.0.0.1:80 | 80 | 80 | 0 | * | 10.0.0.2"), [
    'rules:1:10: VIP address "10.0.0.1:80" is not a valid IP address ' +
    "(an address field holds no port; the virtual port is field 3)",
  ]);
});

Deno.test("parseRules reads IPv6 servers and VIPs and spots the same address spelled twice", () => {
  const [rule] = rulesOf(
    "TELNET | fd00::10 | 554 | 554 | 0 | * | fd00::1 | ::ffff:10.0.0.2 | 2001:db8:0:0:0:0:0:1",
  );
  assert.equal(rule.vip, "fd00::10");
  assert.deepEqual(rule.servers.map((s) => [s.host, s.pos.col]), [
    ["fd00::1", 41],
    ["::ffff:10.0.0.2", 51],
    ["2001:db8:0:0:0:0:0:1", 69],
  ]);
  assert.deepEqual(errorsOf("TELNET | fd00::10 | 554 | 554 | 0 | * | fd00::1 | FD00:0::1"), [
    'rules:1:51: Server "FD00:0::1" is listed twice in this rule (first at column 41)',
  ]);
  assert.deepEqual(
    errorsOf(
      "TELNET | fd00::10 | 554 | 554 | 0 | * | fd00::1\nHTTP | fd00:0:0::10 | 554 | 80 | 0 | * | fd00::2",
    ),
    ["rules:2:8: Duplicate service [fd00::10]:554: already defined at rules:1:10"],
  );
});

Deno.test("parseRules tolerates trailing pipes but not an empty field between servers", () => {
  const [rule] = rulesOf(`${FIXED} | 10.0.0.2 | 10.0.0.3 | |  `);
  assert.deepEqual(rule.servers.map((s) => s.host), ["10.0.0.2", "10.0.0.3"]);
  assert.deepEqual(errorsOf(`${FIXED} | 10.0.0.2 |  | 10.0.0.3`), ["rules:1:51: Empty server field"]);
  assert.deepEqual(errorsOf(`${FIXED} || 10.0.0.3`), ["rules:1:38: Empty server field"]);
  // Only pipes after the placeholders: no server at all.
  assert.deepEqual(errorsOf(`${FIXED} | |`), [
    "rules:1:40: Too few fields: missing server (PROTOCOL | VIP | VIRTUAL-PORT | SERVER-PORT | 0 | * | SERVER | " +
    "SERVER ...)",
  ]);
});

Deno.test("parseRules gives the same positions for CRLF, CR and LF line endings and a byte order mark", () => {
  const lines = ["# rules", "", SEED_RULE, "TELNET | 10.0.0.1 | 80 | 80 | 0 | * | 10.0.0.2"];
  const expected = [
    'rules:3:47: Server "10.10.10.10.1" is not a valid IP address (IPv4 has four parts, not 5)',
    'rules:3:63: Server "10.10.10.10.11" is not a valid IP address (IPv4 has four parts, not 5)',
  ];
  for (const eol of ["\n", "\r\n", "\r"]) {
    for (const text of [lines.join(eol) + eol, "\uFEFF" + lines.join(eol)]) {
      const { rules, errors } = parseRules(text, "rules");
      assert.deepEqual(errors.map((e) => e.format()), expected, JSON.stringify(eol));
      assert.deepEqual(rules.map((r) => [r.pos.line, r.servers[0].host]), [[4, "10.0.0.2"]]);
    }
  }
});

Deno.test("parseRules counts a tab as one column", () => {
  assert.deepEqual(errorsOf("\tTELNET\t|\t10.0.0.1\t|\t80\t|\t80\t|\t0\t|\t*\t|\t10.0.0.1.5\t"), [
    'rules:1:40: Server "10.0.0.1.5" is not a valid IP address (IPv4 has four parts, not 5)',
  ]);
});

Deno.test("parseRules skips blank lines, comment lines and the legend line", () => {
  assert.deepEqual(rulesOf(`\n   \n# a comment\n  \t# indented\n${SEED_LEGEND}\nprotocol | vip\n`), []);
});

Deno.test("parseRules returns frozen rules", () => {
  const [rule] = rulesOf(`${FIXED} | 10.0.0.2`);
  assert.ok(Object.isFrozen(rule) && Object.isFrozen(rule.servers) && Object.isFrozen(rule.servers[0]));
  assert.ok(Object.isFrozen(rule.pos) && Object.isFrozen(rule.servers[0].pos));
});

Deno.test("parseRules refuses more than MAX_SERVERS_PER_RULE servers at the first one over", () => {
  const servers = (n: number) => Array.from({ length: n }, (_, i) => `10.1.${i >> 8}.${i & 255}`);
  assert.equal(rulesOf(`${FIXED} | ${servers(MAX_SERVERS_PER_RULE).join(" | ")}`)[0].servers.length, 256);
  const line = `${FIXED} | ${servers(MAX_SERVERS_PER_RULE + 2).join(" | ")}`;
  const col = line.indexOf(`| 10.1.1.0 |`) + 3;
  assert.deepEqual(errorsOf(line), [`rules:1:${col}: More than 256 servers in one rule`]);
});

Deno.test("parseRules refuses more than MAX_RULES rules, once, at the first one over", () => {
  const line = (i: number) => `TELNET | 10.0.0.1 | ${i + 1} | 80 | 0 | * | 10.0.0.2`;
  const ok = Array.from({ length: MAX_RULES }, (_, i) => line(i));
  assert.equal(rulesOf(ok.join("\n")).length, 1024);
  const { rules, errors } = parseRules([...ok, line(MAX_RULES), line(MAX_RULES + 1)].join("\n"), "rules");
  assert.equal(rules.length, MAX_RULES);
  assert.deepEqual(errors.map((e) => e.format()), ["rules:1025:1: More than 1024 rules in one file"]);
});

Deno.test("parseRules refuses a line over MAX_LINE_LENGTH without parsing it", () => {
  const long = `${FIXED} | 10.0.0.2 ${" ".repeat(MAX_LINE_LENGTH)}`;
  assert.deepEqual(errorsOf(`# first\n${long}`), [
    `rules:2:1: Line is ${long.length} characters long, over the 16384 limit`,
  ]);
});

Deno.test("parseRules stops after MAX_ERRORS errors and says so", () => {
  const text = Array.from({ length: 300 }, () => "garbage").join("\n");
  const errors = errorsOf(text);
  assert.equal(errors.length, MAX_ERRORS + 1);
  assert.equal(errors[MAX_ERRORS - 1].startsWith("rules:100:1: Not a rule"), true);
  assert.equal(errors[MAX_ERRORS], "rules:101:1: Stopped after 100 errors; later lines were not checked");
});

Deno.test("config/agent-rules.example parses with no errors", async () => {
  const text = await Deno.readTextFile(new URL("../../config/agent-rules.example", import.meta.url));
  const rules = rulesOf(text, "agent-rules.example");
  assert.deepEqual(
    rules.map((r) => `${r.protocol} ${r.vip} ${r.vport}->${r.serverPort} x${r.servers.length}`),
    [
      "TELNET 10.10.10.101 7070->7070 x2",
      "TELNET 10.10.10.101 554->554 x2",
      "HTTP 10.10.10.101 80->8080 x3",
      "TELNET 2001:db8::101 7070->7070 x2",
    ],
  );
});
