/**
 * Auto-pagination for every list: a list call answers a `PagePromise`, which is awaited for the first page or
 * iterated (`for await`) for every item, following `next_cursor` page by page where the list has one.
 *
 * @example
 * const first = await client.generations.list({ limit: 20 });      // one page
 * for await (const g of client.generations.list({ limit: 20 })) {}  // every generation
 */
import type { WithRequestId } from "./core.ts";

export interface Page<T> {
  object: "list";
  data: T[];
  next_cursor?: string | null;
}

export class PagePromise<P extends Page<T>, T = P["data"][number]>
  implements PromiseLike<WithRequestId<P>>, AsyncIterable<T>
{
  private first: Promise<WithRequestId<P>> | undefined;
  private readonly fetchPage: (after: string | undefined) => Promise<WithRequestId<P>>;

  /** `fetchPage(after)` fetches the page after the cursor `after` (the first page when undefined). */
  constructor(fetchPage: (after: string | undefined) => Promise<WithRequestId<P>>) {
    this.fetchPage = fetchPage;
  }

  // Lazy, and fetched once: awaiting then iterating the same PagePromise asks for the first page a single time.
  private firstPage(): Promise<WithRequestId<P>> {
    this.first ??= this.fetchPage(undefined);
    return this.first;
  }

  // biome-ignore lint/suspicious/noThenProperty: a PagePromise is awaited like the page it stands for.
  then<R1 = WithRequestId<P>, R2 = never>(
    onfulfilled?: ((page: WithRequestId<P>) => R1 | PromiseLike<R1>) | null,
    // biome-ignore lint/suspicious/noExplicitAny: typed as Promise's, so `.catch((e) => e)` reads the same on both.
    onrejected?: ((reason: any) => R2 | PromiseLike<R2>) | null,
  ): Promise<R1 | R2> {
    return this.firstPage().then(onfulfilled, onrejected);
  }

  // biome-ignore lint/suspicious/noExplicitAny: as Promise's `catch`.
  catch<R = never>(onrejected?: ((reason: any) => R | PromiseLike<R>) | null): Promise<WithRequestId<P> | R> {
    return this.firstPage().catch(onrejected);
  }

  finally(onfinally?: (() => void) | null): Promise<WithRequestId<P>> {
    return this.firstPage().finally(onfinally);
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<T> {
    let page: P = await this.firstPage();
    for (;;) {
      yield* page.data as T[];
      if (!page.next_cursor) return;
      page = await this.fetchPage(page.next_cursor);
    }
  }
}
