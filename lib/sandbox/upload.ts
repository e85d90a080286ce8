/**
 * An upload: the modules of one sandbox, a map of file name to source text. It is checked (names, count, size)
 * before anything is written, and written to a private directory that the child may read and nothing else. A load
 * failure the child reports is turned back into the uploaded file's name, line and column.
 */
import { PositionedError } from "../core/errors.ts";

export interface UploadLimits {
  /** Most modules in one upload. */
  readonly maxModules: number;
  /** Most bytes of source, all modules together. */
  readonly maxBytes: number;
}

export const DEFAULT_UPLOAD_LIMITS: UploadLimits = { maxModules: 32, maxBytes: 1024 * 1024 };

/** A plain module file name: no directories, so every module sits in the one directory the child may read. */
const MODULE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.(ts|js|mjs|mts)$/;

/** An upload that cannot be used; `problems` lists every reason. */
export class UploadError extends Error {
  override name = "UploadError";
  constructor(readonly problems: readonly string[]) {
    super(`Cannot use the upload: ${problems.join("; ")}`);
  }
}

/** A module that could not be loaded, at a place in one of the uploaded files. */
export class SandboxLoadError extends PositionedError {
  override name = "SandboxLoadError";
}

/** The problems of an upload (none: it may be written). */
export function uploadProblems(
  modules: Readonly<Record<string, string>>,
  entry: string,
  limits: UploadLimits = DEFAULT_UPLOAD_LIMITS,
): string[] {
  const problems: string[] = [];
  const names = Object.keys(modules);
  if (names.length === 0) problems.push("it holds no module");
  if (names.length > limits.maxModules) {
    problems.push(
      `it holds ${names.length} modules, at most ${limits.maxModules} (node.uploads.max_modules)`,
    );
  }
  let bytes = 0;
  for (const name of names) {
    if (!MODULE_NAME.test(name) || name.includes("..")) {
      problems.push(
        `"${
          name.slice(0, 60)
        }" is not a module file name (letters, digits, "_", "-", ".", ending .ts, .js or .mjs)`,
      );
    }
    const source = modules[name];
    if (typeof source !== "string") problems.push(`module "${name.slice(0, 60)}" is not text`);
    else bytes += new TextEncoder().encode(source).length;
  }
  if (bytes > limits.maxBytes) {
    problems.push(`its modules hold ${bytes} bytes, at most ${limits.maxBytes} (node.uploads.max_bytes)`);
  }
  if (!Object.hasOwn(modules, entry)) problems.push(`its entry module "${entry}" is not in it`);
  return problems;
}

/** Writes the modules into `dir` (which exists and is private to this process). */
export async function writeUpload(dir: string, modules: Readonly<Record<string, string>>): Promise<void> {
  for (const [name, source] of Object.entries(modules)) {
    await Deno.writeTextFile(`${dir}/${name}`, source, { mode: 0o600 });
  }
}

/**
 * The place of a load failure: Deno names the file as a file: URL (or a path) in `dir` with `:line:col`. The
 * message is kept, with the directory taken out (the node's paths are none of the uploader's business).
 */
export function loadError(dir: string, message: string): SandboxLoadError {
  const prefixes = [`file://${dir}/`, `${dir}/`];
  let clean = message;
  for (const p of prefixes) clean = clean.split(p).join("");
  const at = /(?:file:\/\/)?([^\s"'()]+?):(\d+):(\d+)/.exec(clean);
  const first = clean.split("\n")[0].trim();
  if (at) {
    return new SandboxLoadError(first.replace(/\s*at\s+\S+:\d+:\d+\s*$/, "") || first, {
      file: at[1],
      line: Number(at[2]),
      col: Number(at[3]),
    });
  }
  return new SandboxLoadError(first, { file: "(upload)", line: 1, col: 1 });
}
