/** The edgenode version, shown by --version and /status. Kept equal to deno.json "version" by a test. */
export const VERSION = "0.1.0";
