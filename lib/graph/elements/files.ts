/** Files of savers and players: always inside the node's data directory, never through a symbolic link. */
import { errorMessage, StartError } from "../../core/errors.ts";

export function dataPath(dataDir: string, name: string): string {
  // The name was checked by fileNameParam (no "/", no ".."); this is the second lock on the door.
  if (name.includes("/") || name.includes("\\") || name.startsWith(".")) {
    throw new StartError(`Refusing file name "${name}": it must stay inside the data directory`);
  }
  return `${dataDir.replace(/\/+$/, "")}/${name}`;
}

export function isSymlink(path: string): boolean {
  try {
    return Deno.lstatSync(path).isSymlink;
  } catch {
    return false;
  }
}

export function describeFsError(error: unknown): string {
  if (error instanceof Deno.errors.AlreadyExists) {
    return "the file exists (set overwrite = true to replace it)";
  }
  if (error instanceof Deno.errors.NotFound) return "no such file";
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  // Deno's own permission refusal (the process was started without --allow-write).
  if (error instanceof Deno.errors.NotCapable) return "edgenode may not write files here (--allow-write)";
  return errorMessage(error);
}
