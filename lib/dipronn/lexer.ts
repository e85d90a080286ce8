/**
 * Tokens of the DiProNN program language. Newlines are tokens because the Appendix A program ends some statements
 * with `;` and others with the end of the line (`owner = "Tom Rebok"`). `#` starts a comment that runs to the end
 * of the line. Names may be hierarchical (`localservice.duplicator`, `Sync_high.in1`).
 */
import { addError, type Pos, type ProgramError } from "./ast.ts";

export type TokenType = "name" | "string" | "number" | "punct" | "newline" | "eof";

export interface Token {
  readonly type: TokenType;
  /** The name, the number as written, the string's contents (unescaped), or the punctuation character. */
  readonly text: string;
  readonly pos: Pos;
}

const PUNCT = new Set(["{", "}", "(", ")", ";", ",", "="]);
const NAME_START = /[A-Za-z_]/;
const NAME_PART = /[A-Za-z0-9_]/;
const DIGIT = /[0-9]/;

/** Splits program text into tokens; every lexical mistake is added to `errors` and skipped. */
export function tokenize(text: string, file: string, errors: ProgramError[]): Token[] {
  const tokens: Token[] = [];
  let i = 0;
  let line = 1;
  let lineStart = 0;
  const pos = (at: number): Pos => ({ line, col: at - lineStart + 1 });
  const fail = (message: string, p: Pos) => addError(errors, message, { file, ...p });

  while (i < text.length) {
    const c = text[i];
    if (c === "\n") {
      tokens.push({ type: "newline", text: "\n", pos: pos(i) });
      i++;
      line++;
      lineStart = i;
    } else if (c === " " || c === "\t" || c === "\r") {
      i++;
    } else if (c === "#") {
      while (i < text.length && text[i] !== "\n") i++;
    } else if (PUNCT.has(c)) {
      tokens.push({ type: "punct", text: c, pos: pos(i) });
      i++;
    } else if (c === '"') {
      const start = pos(i);
      let out = "";
      i++;
      for (;;) {
        if (i >= text.length || text[i] === "\n") {
          fail('Unterminated string: it needs a closing " on the same line', start);
          break;
        }
        const d = text[i++];
        if (d === '"') break;
        if (d === "\\" && (text[i] === '"' || text[i] === "\\")) out += text[i++];
        else out += d;
      }
      tokens.push({ type: "string", text: out, pos: start });
    } else if (DIGIT.test(c) || (c === "-" && DIGIT.test(text[i + 1] ?? ""))) {
      const start = i;
      i++;
      while (
        i < text.length && /[0-9.eE+\-]/.test(text[i]) && !(text[i] === "-" && !/[eE]/.test(text[i - 1]))
      ) i++;
      const written = text.slice(start, i);
      if (!Number.isFinite(Number(written))) fail(`Not a number: ${written}`, pos(start));
      tokens.push({ type: "number", text: written, pos: pos(start) });
    } else if (NAME_START.test(c)) {
      const start = i;
      for (;;) {
        while (i < text.length && NAME_PART.test(text[i])) i++;
        // A dot continues a hierarchical name only when a name part follows it.
        if (text[i] === "." && NAME_START.test(text[i + 1] ?? "")) i++;
        else break;
      }
      if (text[i] === ".") {
        fail(`A name cannot end with "." here: ${text.slice(start, i + 1)}`, pos(i));
        i++;
      }
      tokens.push({ type: "name", text: text.slice(start, i), pos: pos(start) });
    } else {
      const shown = c.codePointAt(0)! < 32 ? `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}` : c;
      fail(`Unexpected character "${shown}"`, pos(i));
      i++;
    }
  }
  tokens.push({ type: "eof", text: "", pos: pos(i) });
  return tokens;
}
