/**
 * A short-lived cache of rows that almost never change (runner tokens, model specs), kept in the isolate so that the
 * hot path (every runner call, every generation) does not pay a D1 round trip to read them again. Entries are kept
 * per database binding (tests give each app its own), only rows that were found are kept (a runner registered after
 * a miss works at once), and a write in this isolate clears them. Another isolate sees a change after at most `ttlMs`:
 * that is the price, documented where each cache is used.
 */
export class IsolateCache<V> {
  private readonly byScope = new WeakMap<object, Map<string, { value: V; until: number }>>();

  constructor(
    readonly ttlMs: number,
    private readonly maxEntries = 1024,
  ) {}

  /** The cached value for `key`, or what `load` finds (kept for `ttlMs` when found). */
  async get(scope: object, key: string, load: () => Promise<V | undefined>, now = Date.now()): Promise<V | undefined> {
    let entries = this.byScope.get(scope);
    const hit = entries?.get(key);
    if (hit && hit.until > now) return hit.value;
    const value = await load();
    if (value === undefined) {
      entries?.delete(key);
      return undefined;
    }
    if (!entries) this.byScope.set(scope, (entries = new Map()));
    // Oldest first out (a Map iterates in insertion order): the cache stays small whatever the callers send.
    entries.delete(key);
    if (entries.size >= this.maxEntries) entries.delete(entries.keys().next().value!);
    entries.set(key, { value, until: now + this.ttlMs });
    return value;
  }

  /** Forgets every entry of `scope` (after a write that may change them). */
  clear(scope: object): void {
    this.byScope.delete(scope);
  }
}
