/**
 * The syntax tree of a DiProNN program (report 19/2007, Appendix A), shared by the text form, the YAML form and the
 * printer. It records what was written, with positions; meaning (which AP feeds which port) is worked out from it
 * by `session.ts`, so both forms are checked by one piece of code.
 */
import { type Position, PositionedError } from "../core/errors.ts";

/** A place in the program's file (the file name lives on the Program). */
export interface Pos {
  readonly line: number;
  readonly col: number;
}

/** A value: `"text"`, `0.001`, `localservice.duplicator`, or a call such as `V_in(DIPRONN_INPUT(10000))`. */
export type Value =
  | { readonly kind: "string"; readonly text: string; readonly pos: Pos }
  | { readonly kind: "number"; readonly text: string; readonly pos: Pos }
  | { readonly kind: "name"; readonly text: string; readonly pos: Pos }
  | { readonly kind: "call"; readonly name: string; readonly args: readonly Value[]; readonly pos: Pos };

/** `key = value, value` (session attributes, AP parameters, inputs and outputs). */
export interface Attr {
  readonly kind: "attr";
  readonly key: string;
  readonly values: readonly Value[];
  readonly pos: Pos;
}

/** A bare word such as `use_RTP`. */
export interface Flag {
  readonly kind: "flag";
  readonly name: string;
  readonly pos: Pos;
}

/** `{ AP name="..." ref=...; body }` or `{ VM name="..." ref=...; { AP ... } ... }`. */
export interface Block {
  readonly kind: "block";
  readonly type: "AP" | "VM";
  /** The `name=... ref=...` pairs on the opening line. */
  readonly header: readonly Attr[];
  readonly body: readonly Statement[];
  readonly pos: Pos;
}

export type Statement = Attr | Flag | Block;

export interface Program {
  /** Name used in error positions. */
  readonly file: string;
  readonly project: { readonly name: string; readonly pos: Pos } | null;
  readonly body: readonly Statement[];
}

/** A mistake in a DiProNN program, at its place. */
export class ProgramError extends PositionedError {
  override name = "ProgramError";
}

/** More errors than this are not built, only summarised: a garbage upload costs no more than a short one. */
export const MAX_ERRORS = 100;

/** Adds an error to `errors` unless the list is already past MAX_ERRORS. */
export function addError(
  errors: ProgramError[],
  message: string,
  pos: Position,
  options?: { related?: Position },
): void {
  if (errors.length <= MAX_ERRORS) errors.push(new ProgramError(message, pos, options));
}

export function at(file: string, pos: Pos): Position {
  return { file, line: pos.line, col: pos.col };
}

/** The value as written, for messages and the printer. */
export function valueText(v: Value): string {
  switch (v.kind) {
    case "string":
      return `"${v.text.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
    case "number":
    case "name":
      return v.text;
    case "call":
      return `${v.name}(${v.args.map(valueText).join(", ")})`;
  }
}

/** The tree without positions, for comparing two programs (the round-trip tests, the YAML form). */
export function stripPositions(p: Program): unknown {
  const strip = (x: unknown): unknown => {
    if (Array.isArray(x)) return x.map(strip);
    if (x && typeof x === "object") {
      return Object.fromEntries(
        Object.entries(x).filter(([k]) => k !== "pos" && k !== "file").map(([k, v]) => [k, strip(v)]),
      );
    }
    return x;
  };
  return strip(p);
}
