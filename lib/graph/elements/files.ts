/** Files of savers and players: always inside the node's data directory, never through a symbolic link. */
import { errorMessage, StartError } from "../../core/errors.ts";

export function dataPath(dataDir: string, name: string): string {
  // The name was checked by fileNameParam (no "/", no ".."); this is the second lock on the door.
  if (name.includes("/") || name.includes("\\") || name.startsWith(".")) {
    throw new StartError(`Refusing file name "${name}": it must stay inside the data directory`);
  }
  return `${dataDir.replace(/\/+$/, "")}/${name}`;
}

/** Files savers create: the owner reads and writes, the group reads, others nothing. */
export const FILE_MODE = 0o640;

/** A path that is a symbolic link, or that changed between the check and the open. */
export class LinkRefused extends Error {
  override name = "LinkRefused";
}

/**
 * Opens a file of the data directory without following a symbolic link. Deno.open has no O_NOFOLLOW, so the path is
 * looked at before (a link is refused before open could follow it, and a file to replace is truncated only after
 * the check, never through a link) and after: the open file must be the very file the path names (same device and
 * inode), or it is closed and refused.
 */
export async function openNoFollow(path: string, options: Deno.OpenOptions): Promise<Deno.FsFile> {
  const before = await lstatOrNull(path);
  if (before?.isSymlink) throw new LinkRefused("it is a symbolic link");
  const file = await Deno.open(path, { ...options, truncate: false });
  try {
    const [opened, now] = await Promise.all([file.stat(), Deno.lstat(path)]);
    if (now.isSymlink) throw new LinkRefused("it is a symbolic link");
    if (opened.dev !== now.dev || opened.ino !== now.ino) {
      throw new LinkRefused("the file was replaced while it was opened");
    }
    if (!opened.isFile) throw new LinkRefused("not a regular file");
    if (options.truncate) await file.truncate(0);
  } catch (error) {
    file.close();
    throw error;
  }
  return file;
}

async function lstatOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.lstat(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw error;
  }
}

export function describeFsError(error: unknown): string {
  if (error instanceof LinkRefused) return error.message;
  if (error instanceof Deno.errors.AlreadyExists) {
    return "the file exists (set overwrite = true to replace it)";
  }
  if (error instanceof Deno.errors.NotFound) return "no such file";
  if (error instanceof Deno.errors.PermissionDenied) return "permission denied";
  // Deno's own permission refusal (the process was started without --allow-write).
  if (error instanceof Deno.errors.NotCapable) return "edgenode may not write files here (--allow-write)";
  return errorMessage(error);
}
