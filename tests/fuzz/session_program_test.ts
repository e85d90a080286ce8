/**
 * Property tests of the whole upload path of a session program (parse, describe the session, check it against
 * the AP kinds and the node's budgets): whatever a program says, checkProgram returns a plan or throws an ErrorList
 * of positioned ProgramErrors, so a bad upload is a 400 listing its mistakes, never a 500. Programs are the report's
 * Appendix A (both variants, both forms) with words replaced, statements dropped or doubled.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { ErrorList } from "../../lib/core/errors.ts";
import { ProgramError } from "../../lib/dipronn/ast.ts";
import { coreElements } from "../../lib/graph/elements/mod.ts";
import { checkProgram } from "../../lib/graph/program.ts";
import { params } from "./_fuzz.ts";

const fixture = (name: string) => Deno.readTextFileSync(new URL(`../fixtures/${name}`, import.meta.url));
const TEXTS = [fixture("appendix_a.dipronn"), fixture("appendix_a_forwarders.dipronn")];
const YAML = fixture("appendix_a.yaml");
const kinds = coreElements();

/** Words of these programs and near misses: other APs' names and ports, bad numbers, odd addresses. */
const WORDS = [
  ...new Set(
    [...TEXTS, YAML].flatMap((t) => t.match(/[A-Za-z_][A-Za-z0-9_.]*|-?[0-9][0-9.eE+-]*|"[^"\n]*"/g) ?? []),
  ),
  "0",
  "-1",
  "65535",
  "65536",
  "1e308",
  "0.0000001",
  "NaN",
  '""',
  '"192.0.2.1:5004"',
  '"127.0.0.1:10000"',
  '"[::1]:5004"',
  '"::1"',
  '"host.example:5004"',
  '"../../etc/passwd"',
  '"/tmp/x.dump"',
  "DIPRONN_INPUT(0)",
  "DIPRONN_INPUT(10000)",
  'DIPRONN_OUTPUT("192.0.2.7:4000")',
  "out(Dup_V.in)",
  "in1(Sync_high.in1)",
  "variable(256)",
  "constant(-5)",
  "allow = loopback",
  "overwrite = true",
];
const WORD_AT = /[A-Za-z_][A-Za-z0-9_.]*|-?[0-9][0-9.eE+-]*|"[^"\n]*"/g;

const edited = fc.tuple(
  fc.constantFrom(...TEXTS, YAML),
  fc.array(fc.tuple(fc.nat(), fc.nat({ max: 3 }), fc.constantFrom(...WORDS)), { minLength: 1, maxLength: 5 }),
).map(([text, edits]) => {
  let out = text;
  for (const [at, op, word] of edits) {
    if (op <= 1) {
      // Replace the at-th word.
      const spots = [...out.matchAll(WORD_AT)];
      if (!spots.length) continue;
      const m = spots[at % spots.length];
      out = out.slice(0, m.index) + word + out.slice(m.index! + m[0].length);
    } else {
      // Drop (2) or double (3) a line.
      const lines = out.split("\n");
      const i = at % lines.length;
      if (op === 2) lines.splice(i, 1);
      else lines.splice(i, 0, lines[i]);
      out = lines.join("\n");
    }
  }
  return { text: out, yaml: text === YAML };
});

Deno.test("checkProgram gives a plan or an ErrorList of ProgramErrors for any edit of the Appendix A programs", () => {
  let planned = 0;
  fc.assert(
    fc.property(edited, ({ text, yaml }) => {
      try {
        checkProgram(text, { file: yaml ? "fuzz.yaml" : "fuzz.dipronn", kinds });
        planned++;
      } catch (error) {
        assert.ok(error instanceof ErrorList, `threw ${error instanceof Error ? error.stack : error}`);
        for (const e of error.errors) {
          assert.ok(e instanceof ProgramError, `${e}`);
          assert.ok(e.line >= 1 && e.col >= 1, e.format());
        }
      }
    }),
    params(2000),
  );
  // The edits must leave some programs valid, or the checks after the first error would go unexercised.
  assert.ok(planned > 20, `${planned} edited programs were planned`);
});
