/**
 * The DiProNN program language (report 19/2007, Appendix A) -> syntax tree. A statement ends at `;`, at the end of
 * its line, or before the `}` that closes its block; a list may run over lines after a comma and may end with one
 * (`outputs = out(DIPRONN_OUTPUT),` in the Appendix). Every mistake is collected with its position and the parser
 * carries on at the next statement, so one run reports them all.
 *
 *   program   = [ "Project" name end ] { statement }
 *   statement = name "=" values end | name end | block
 *   block     = "{" ("AP" | "VM") { name "=" value } [";"] { statement } "}"
 *   values    = value { "," value } [","]
 *   value     = string | number | name [ "(" [ values ] ")" ]
 */
import { ErrorList } from "../core/errors.ts";
import type { Attr, Block, Flag, Program, Statement, Value } from "./ast.ts";
import { addError, MAX_ERRORS, type Pos, ProgramError } from "./ast.ts";
import { type Token, tokenize } from "./lexer.ts";

/** Programs larger than this are refused before parsing. */
export const MAX_PROGRAM_BYTES = 1024 * 1024;
/** `{ VM { AP } }`: the deepest the language goes. */
const MAX_BLOCK_DEPTH = 2;
/** Deepest nesting of calls like `a(b(c()))`; the language needs two. */
const MAX_CALL_DEPTH = 8;

/** Parses program text; throws ErrorList<ProgramError> with every mistake, in file order. */
export function parseProgram(text: string, file: string): Program {
  const errors: ProgramError[] = [];
  if (text.length > MAX_PROGRAM_BYTES) {
    throw new ErrorList([
      new ProgramError(`Program is larger than ${MAX_PROGRAM_BYTES} bytes`, { file, line: 1, col: 1 }),
    ], "Invalid program");
  }
  const parser = new Parser(tokenize(text, file, errors), file, errors);
  const program = parser.program();
  if (errors.length) throw programErrors(errors);
  return program;
}

/**
 * A list of values written on its own, such as `out(Next.in)` in the YAML form. Positions are shifted to `at`, the
 * place of the text in its file; mistakes are added to `errors`.
 */
export function parseValueList(
  text: string,
  file: string,
  at: Pos,
  errors: ProgramError[],
  /** Where the text's column `col` (1-based) lies in its line of the file, when not at.col + col - 1 (escapes). */
  colOf?: (col: number) => number,
): Value[] {
  const shift = (
    p: Pos,
  ): Pos => (p.line === 1
    ? { line: at.line, col: colOf ? colOf(p.col) : at.col + p.col - 1 }
    : { line: at.line + p.line - 1, col: p.col });
  const lexical: ProgramError[] = [];
  const tokens = tokenize(text, file, lexical).map((t) => ({ ...t, pos: shift(t.pos) }));
  for (const e of lexical) addError(errors, e.message, { file, ...shift(e) });
  return new Parser(tokens, file, errors).valueList();
}

/** The errors as one ErrorList; past MAX_ERRORS only a line saying there were more. */
export function programErrors(errors: ProgramError[]): ErrorList<ProgramError> {
  const list = new ErrorList(errors, "Invalid program");
  if (list.errors.length <= MAX_ERRORS) return list;
  const shown = list.errors.slice(0, MAX_ERRORS);
  const last = shown[shown.length - 1];
  shown.push(new ProgramError(`More errors not shown (the first ${MAX_ERRORS} are)`, last));
  return new ErrorList(shown, "Invalid program");
}

/** Thrown inside the parser to abandon one statement; never escapes it. */
class Skip extends Error {}

class Parser {
  #i = 0;
  #depth = 0;

  constructor(
    private readonly tokens: Token[],
    private readonly file: string,
    private readonly errors: ProgramError[],
  ) {}

  program(): Program {
    let project: Program["project"] = null;
    const body: Statement[] = [];
    for (;;) {
      this.#skipEnds();
      const t = this.#peek();
      if (t.type === "eof") break;
      if (t.type === "punct" && t.text === "}") {
        this.#fail('Unexpected "}": no block is open here', t.pos);
        this.#i++;
        continue;
      }
      if (t.type === "name" && t.text === "Project") {
        try {
          this.#i++;
          const name = this.#expect("name", "a project name after Project");
          this.#end();
          if (project) {
            this.#fail(`Project is named twice${firstAt(project.pos)}`, t.pos, project.pos);
          } else if (body.length) {
            this.#fail("Project must come first, before any other statement", t.pos);
          } else {
            project = { name: name.text, pos: t.pos };
          }
        } catch (e) {
          this.#recover(e);
        }
        continue;
      }
      const s = this.#statement();
      if (s) body.push(s);
    }
    return { file: this.file, project, body };
  }

  /** One statement, or null after a mistake (reported, and skipped to the next statement). */
  #statement(): Statement | null {
    try {
      const t = this.#peek();
      if (t.type === "punct" && t.text === "{") return this.#block();
      const name = this.#expect("name", "a statement (name = value, a flag, or a { block })");
      if (this.#isPunct("=")) {
        this.#i++;
        const values = this.#values();
        this.#end();
        return { kind: "attr", key: name.text, values, pos: name.pos } satisfies Attr;
      }
      this.#end();
      return { kind: "flag", name: name.text, pos: name.pos } satisfies Flag;
    } catch (e) {
      this.#recover(e);
      return null;
    }
  }

  #block(): Block {
    const open = this.#next();
    if (this.#depth >= MAX_BLOCK_DEPTH) {
      this.#fail("Blocks nest two deep at most: a VM holding APs", open.pos);
      this.#skipBlock(open);
      throw new Skip();
    }
    this.#depth++;
    try {
      return this.#blockBody(open);
    } finally {
      this.#depth--;
    }
  }

  #blockBody(open: Token): Block {
    const type = this.#peek();
    if (type.type !== "name" || (type.text !== "AP" && type.text !== "VM")) {
      this.#fail(`Expected AP or VM after "{", found ${describe(type)}`, type.pos);
      this.#skipBlock(open);
      throw new Skip();
    }
    this.#i++;
    const header: Attr[] = [];
    while (this.#peek().type === "name") {
      const key = this.#next();
      if (!this.#isPunct("=")) {
        this.#fail(`Expected "=" after ${key.text} in the ${type.text} header`, this.#peek().pos);
        this.#skipBlock(open);
        throw new Skip();
      }
      this.#i++;
      try {
        header.push({ kind: "attr", key: key.text, values: [this.#value(0)], pos: key.pos });
      } catch (e) {
        if (!(e instanceof Skip)) throw e;
        this.#skipBlock(open);
        throw e;
      }
    }
    if (this.#isPunct(";")) this.#i++;
    const body: Statement[] = [];
    for (;;) {
      this.#skipEnds();
      const t = this.#peek();
      if (t.type === "eof") {
        this.#fail(`The ${type.text} block opened here is never closed with "}"`, open.pos);
        break;
      }
      if (t.type === "punct" && t.text === "}") {
        this.#i++;
        break;
      }
      const s = this.#statement();
      if (s) body.push(s);
    }
    return { kind: "block", type: type.text as "AP" | "VM", header, body, pos: open.pos };
  }

  /** A whole token stream that is one list of values (the YAML form's strings). */
  valueList(): Value[] {
    try {
      const values = this.#values();
      if (this.#peek().type !== "eof") {
        this.#fail(`Unexpected ${describe(this.#peek())} after the value`, this.#peek().pos);
      }
      return values;
    } catch (e) {
      if (!(e instanceof Skip)) throw e;
      return [];
    }
  }

  #values(): Value[] {
    const out = [this.#value(0)];
    while (this.#isPunct(",")) {
      this.#i++;
      while (this.#peek().type === "newline") this.#i++;
      // A trailing comma: the list ends at the `}` or `;` after it.
      if (this.#isPunct("}") || this.#isPunct(";")) break;
      out.push(this.#value(0));
    }
    return out;
  }

  #value(depth: number): Value {
    const t = this.#peek();
    if (t.type !== "name" && t.type !== "string" && t.type !== "number") {
      this.#fail(`Expected a value, found ${describe(t)}`, t.pos);
      throw new Skip();
    }
    this.#i++;
    if (t.type === "string") return { kind: "string", text: t.text, pos: t.pos };
    if (t.type === "number") return { kind: "number", text: t.text, pos: t.pos };
    if (!this.#isPunct("(")) return { kind: "name", text: t.text, pos: t.pos };
    const paren = this.#next();
    if (depth >= MAX_CALL_DEPTH) {
      this.#fail(`Calls nest deeper than ${MAX_CALL_DEPTH} levels`, paren.pos);
      throw new Skip();
    }
    const args: Value[] = [];
    if (!this.#isPunct(")")) {
      args.push(this.#value(depth + 1));
      while (this.#isPunct(",")) {
        this.#i++;
        args.push(this.#value(depth + 1));
      }
    }
    if (!this.#isPunct(")")) {
      this.#fail(
        `Expected ")" to close the "(" of ${t.text}, found ${describe(this.#peek())}`,
        this.#peek().pos,
      );
      throw new Skip();
    }
    this.#i++;
    return { kind: "call", name: t.text, args, pos: t.pos };
  }

  /** A statement's end: `;`, a newline, or (not consumed) the `}` that closes the block, or the end of the file. */
  #end(): void {
    const t = this.#peek();
    if (t.type === "newline" || (t.type === "punct" && t.text === ";")) {
      this.#i++;
      return;
    }
    if (t.type === "eof" || (t.type === "punct" && t.text === "}")) return;
    this.#fail(`Expected ";" or the end of the line, found ${describe(t)}`, t.pos);
    throw new Skip();
  }

  /** After a mistake: skip to the end of the statement (never past a `}` that closes the block). */
  #recover(e: unknown): void {
    if (!(e instanceof Skip)) throw e;
    let depth = 0;
    for (;;) {
      const t = this.#peek();
      if (t.type === "eof") return;
      if (t.type === "punct" && t.text === "(") depth++;
      if (t.type === "punct" && t.text === ")") depth = Math.max(0, depth - 1);
      if (depth === 0 && (t.type === "newline" || (t.type === "punct" && t.text === ";"))) {
        this.#i++;
        return;
      }
      if (t.type === "punct" && (t.text === "}" || t.text === "{")) return;
      this.#i++;
    }
  }

  /** Skips a broken block to its matching `}`, so its body is not read as statements of the enclosing one. */
  #skipBlock(open: Token): void {
    let depth = 1;
    for (;;) {
      const t = this.#next();
      if (t.type === "eof") {
        // #next stays on the end (it never moves past it): nothing to step back over, or the last "{" would be
        // read again, and again, each time reported as never closed.
        this.#fail(`The block opened here is never closed with "}"`, open.pos);
        return;
      }
      if (t.type === "punct" && t.text === "{") depth++;
      if (t.type === "punct" && t.text === "}" && --depth === 0) return;
    }
  }

  #skipEnds(): void {
    while (this.#peek().type === "newline" || this.#isPunct(";")) this.#i++;
  }

  #expect(type: "name", what: string): Token {
    const t = this.#peek();
    if (t.type !== type) {
      this.#fail(`Expected ${what}, found ${describe(t)}`, t.pos);
      throw new Skip();
    }
    this.#i++;
    return t;
  }

  #isPunct(c: string): boolean {
    const t = this.#peek();
    return t.type === "punct" && t.text === c;
  }

  #peek(): Token {
    return this.tokens[this.#i];
  }

  #next(): Token {
    const t = this.tokens[this.#i];
    if (t.type !== "eof") this.#i++;
    return t;
  }

  #fail(message: string, pos: Pos, related?: Pos): void {
    addError(this.errors, message, { file: this.file, ...pos }, {
      related: related ? { file: this.file, ...related } : undefined,
    });
    // Past the limit the rest of the text is not worth reading.
    if (this.errors.length > MAX_ERRORS) this.#i = this.tokens.length - 1;
  }
}

/** ` (first at line L, column C)`: the other place a duplicate points at. */
export function firstAt(pos: Pos): string {
  return ` (first at line ${pos.line}, column ${pos.col})`;
}

function describe(t: Token): string {
  switch (t.type) {
    case "eof":
      return "the end of the file";
    case "newline":
      return "the end of the line";
    case "string":
      return `the string "${t.text}"`;
    default:
      return `"${t.text}"`;
  }
}
