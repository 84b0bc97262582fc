import { getTableColumns, type SQL, type Table } from "drizzle-orm";
import { SQLiteSyncDialect } from "drizzle-orm/sqlite-core";
import type { Db } from "./index.ts";

const dialect = new SQLiteSyncDialect();

export type Statement = SQL | { toSQL(): { sql: string; params: unknown[] } };

/**
 * Runs statements as one D1 batch: D1 has no BEGIN TRANSACTION, and a batch is its transaction (all or nothing,
 * in order). Takes raw `sql` and query builders alike, which drizzle's own batch does not.
 */
export async function transaction(db: Db, statements: Statement[]): Promise<D1LikeResult[]> {
  const client = db.$client as unknown as D1Like;
  const prepared = statements.map((s) => {
    const q = "toSQL" in s ? s.toSQL() : dialect.sqlToQuery(s);
    return client.prepare(q.sql).bind(...q.params);
  });
  return client.batch(prepared);
}

/** The rows a raw select of `table` answered in a `transaction`, mapped as drizzle maps them (names, JSON, booleans). */
export function rowsOf<T extends Table>(table: T, result: { results?: unknown[] } | undefined): T["$inferSelect"][] {
  const columns = Object.entries(getTableColumns(table));
  return ((result?.results ?? []) as Array<Record<string, unknown>>).map((raw) => {
    const row: Record<string, unknown> = {};
    for (const [key, column] of columns) {
      const value = raw[column.name];
      row[key] = value === null || value === undefined ? null : column.mapFromDriverValue(value);
    }
    return row as T["$inferSelect"];
  });
}

export interface D1LikeResult {
  meta: { changes?: number };
  results?: unknown[];
}
interface D1LikeStatement {
  bind(...values: unknown[]): D1LikeStatement;
}
interface D1Like {
  prepare(sql: string): D1LikeStatement;
  batch(statements: D1LikeStatement[]): Promise<D1LikeResult[]>;
}
