/**
 * A node process for the session soaks: roles [node] on loopback, a status API with a token, its data directory in a
 * temporary folder; stopped and removed when disposed.
 */
import { type EdgenodeProcess, LISTENING, startEdgenode, tempConfig } from "../e2e/_process.ts";

const TOKEN = "soak-token-0123456789";
const LO = "127.0.0.1";

export interface SoakNode extends AsyncDisposable {
  readonly process: EdgenodeProcess;
  readonly dataDir: string;
  /** The session API's base URL (`.../node/sessions`). */
  readonly api: string;
  /** The header that authorizes changes. */
  readonly auth: Record<string, string>;
}

export async function soakNode(): Promise<SoakNode> {
  const config = await tempConfig("");
  const dataDir = config.path.replace(/[^/]+$/, "data");
  await Deno.writeTextFile(
    config.path,
    `roles: [node]\nstatus:\n  token: ${TOKEN}\nnode:\n  bind: ${LO}\n  data_dir: ${dataDir}\n`,
  );
  const process = startEdgenode(["--config", config.path, "--status", `${LO}:0`]);
  const dispose = async () => {
    await process[Symbol.asyncDispose]();
    await config[Symbol.asyncDispose]();
  };
  try {
    const [, statusPort] = await process.waitForLine(LISTENING);
    return {
      process,
      dataDir,
      api: `http://${LO}:${statusPort}/node/sessions`,
      auth: { authorization: `Bearer ${TOKEN}` },
      [Symbol.asyncDispose]: dispose,
    };
  } catch (error) {
    await dispose();
    throw error;
  }
}
