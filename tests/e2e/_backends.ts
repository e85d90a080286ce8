/**
 * The scheduler tests' real TCP peers moved to tests/_support/backends.ts, since unit tests use them too; this file
 * re-exports them (and the value-returning wait under its old name `until`) for the tests that still import it here.
 */
export * from "../_support/backends.ts";
export { poll as until } from "../_support/until.ts";
