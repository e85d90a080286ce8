/**
 * Reading the text files an operator names (a config, a session program): a missing, unreadable or oversized file
 * is a usage error that says which file and why, before anything is parsed.
 */
import { UsageError } from "./errors.ts";

/** The file's text; throws UsageError naming `what` and the path when it cannot be read or exceeds `maxBytes`. */
export async function readTextFileLimited(path: string, maxBytes: number, what: string): Promise<string> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new UsageError(`Cannot read ${what} "${path}": no such file`);
    }
    if (error instanceof Deno.errors.PermissionDenied || error instanceof Deno.errors.NotCapable) {
      throw new UsageError(`Cannot read ${what} "${path}": permission denied`);
    }
    throw error;
  }
  if (!info.isFile) throw new UsageError(`Cannot read ${what} "${path}": not a regular file`);
  if (info.size > maxBytes) {
    throw new UsageError(
      `Cannot read ${what} "${path}": ${info.size} bytes exceeds the ${maxBytes} byte limit`,
    );
  }
  return await Deno.readTextFile(path);
}
