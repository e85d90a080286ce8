/**
 * Property tests of the HAProxy agent-check reply, which a scheduler reads from an agent over the network: any text
 * parses without throwing, and every reply the writer makes parses back to its fields with no problem reported.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  AGENT_ADMIN_STATES,
  AGENT_OP_STATES,
  type AgentReplyFields,
  formatAgentReply,
  MAX_AGENT_MAXCONN,
  MAX_AGENT_REPLY,
  MAX_WEIGHT_PERCENT,
  parseAgentReply,
} from "../../lib/net/agent_check.ts";
import { anyText, onlyThrows, params } from "./_fuzz.ts";

const word = fc.oneof(
  fc.constantFrom(...AGENT_ADMIN_STATES, ...AGENT_OP_STATES, "UP", "Drain", "failed", "#", "%", "maxconn:"),
  fc.nat({ max: 40000 }).map((n) => `${n}%`),
  fc.nat().map((n) => `maxconn:${n}`),
  fc.constantFrom("75%%", "-5%", "1.5%", "maxconn:-1", "maxconn:1e3", "maxconn:99999999999", "down#busy"),
  anyText(8),
);
const line = fc.tuple(
  fc.array(fc.tuple(word, fc.constantFrom(" ", "\t", ",", ", ", "  ")), { maxLength: 8 }),
  fc.option(anyText(30)),
  fc.constantFrom("", "\n", "\r\n", "\r", "\nmore"),
).map(([words, description, end]) =>
  words.map(([w, sep]) => w + sep).join("") + (description === null ? "" : ` #${description}`) + end
);

const fields: fc.Arbitrary<AgentReplyFields> = fc.record({
  weightPercent: fc.nat({ max: MAX_WEIGHT_PERCENT }),
  maxconn: fc.nat({ max: MAX_AGENT_MAXCONN }),
  admin: fc.constantFrom(...AGENT_ADMIN_STATES),
  op: fc.constantFrom(...AGENT_OP_STATES),
  description: fc.oneof(anyText(40), fc.string({ maxLength: 1100, unit: "binary-ascii" })),
}, { requiredKeys: [] });

Deno.test("parseAgentReply never throws and keeps its fields in range", () => {
  fc.assert(
    fc.property(fc.oneof(line, anyText(200), fc.string({ minLength: 1000, maxLength: 1100 })), (text) => {
      const reply = onlyThrows(() => parseAgentReply(text))!;
      if (reply.weightPercent !== undefined) {
        assert.ok(Number.isInteger(reply.weightPercent) && reply.weightPercent <= MAX_WEIGHT_PERCENT);
      }
      if (reply.maxconn !== undefined) {
        assert.ok(Number.isInteger(reply.maxconn) && reply.maxconn <= MAX_AGENT_MAXCONN);
      }
      if (reply.description !== undefined) assert.match(reply.description, /^[\x20-\x7e]*$/);
    }),
    params(4000),
  );
});

Deno.test("formatAgentReply writes a line that parseAgentReply reads back to the same fields", () => {
  fc.assert(
    fc.property(fields, (f) => {
      const text = formatAgentReply(f);
      assert.ok(text.endsWith("\n") && text.length - 1 <= MAX_AGENT_REPLY, "one line within the limit");
      const back = parseAgentReply(text);
      assert.deepEqual(back.problems, []);
      const { problems: _, ...got } = back;
      const want: Record<string, unknown> = { ...f };
      // The description is made printable and may be cut to fit; the parser gives exactly what was written.
      delete want.description;
      const { description, ...rest } = got;
      assert.deepEqual(rest, want);
      const written = f.description?.replaceAll("\t", " ").replace(/[^\x20-\x7e]/g, "?").trim() ?? "";
      if (written === "") assert.equal(description, undefined);
      else assert.ok(description !== undefined && written.startsWith(description), `${description}`);
      // And writing what was read gives the same line again.
      assert.equal(formatAgentReply(got), text);
    }),
    params(3000),
  );
});
