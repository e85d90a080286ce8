/**
 * Syntax tree -> program text in the layout of Appendix A: one statement per line, `;` after each, blocks indented
 * by four spaces. Comments are not kept. `parseProgram(printProgram(p))` gives back `p` (positions aside); the
 * round-trip tests hold it to that.
 */
import { type Program, type Statement, valueText } from "./ast.ts";

export function printProgram(program: Program): string {
  const lines: string[] = [];
  if (program.project) lines.push(`Project ${program.project.name};`);
  for (const s of program.body) printStatement(s, "", lines);
  return lines.join("\n") + "\n";
}

function printStatement(s: Statement, indent: string, lines: string[]): void {
  switch (s.kind) {
    case "flag":
      lines.push(`${indent}${s.name};`);
      return;
    case "attr":
      lines.push(`${indent}${s.key} = ${s.values.map(valueText).join(", ")};`);
      return;
    case "block": {
      const header = s.header.map((a) => `${a.key}=${a.values.map(valueText).join(", ")}`).join(" ");
      lines.push(`${indent}{ ${s.type}${header ? ` ${header}` : ""};`);
      for (const inner of s.body) printStatement(inner, indent + "    ", lines);
      lines.push(`${indent}}`);
    }
  }
}
