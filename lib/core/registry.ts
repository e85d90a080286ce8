/**
 * Name -> definition registries (roles, pickers, active programs, sub-commands). An unknown name is an error that
 * lists the known ones; a name registered twice is a programming error.
 */
import { UnknownNameError } from "./errors.ts";

export class Registry<T extends { readonly name: string }> {
  readonly #items = new Map<string, T>();

  /** `kind` names what is registered ("role", "picker") in error messages. */
  constructor(readonly kind: string, items: Iterable<T> = []) {
    for (const item of items) this.register(item);
  }

  register(item: T): this {
    if (this.#items.has(item.name)) {
      throw new Error(
        `${this.kind[0].toUpperCase()}${this.kind.slice(1)} "${item.name}" is registered twice`,
      );
    }
    this.#items.set(item.name, item);
    return this;
  }

  has(name: string): boolean {
    return this.#items.has(name);
  }

  /** The item called `name`; throws UnknownNameError listing the known names otherwise. */
  get(name: string): T {
    const item = this.#items.get(name);
    if (!item) throw new UnknownNameError(this.kind, name, this.names());
    return item;
  }

  names(): string[] {
    return [...this.#items.keys()];
  }

  values(): T[] {
    return [...this.#items.values()];
  }
}
