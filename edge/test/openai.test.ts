/**
 * The OpenAI-compatible `POST /v1/images/generations`: bad input is a 400 in OpenAI's error shape (never a 500 the
 * official client would retry), retries never make a second job, and defect-10 inputs are refused at the door.
 */
import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { call, completeLeased, generate, lease, newRunner, newTenant, registerModel } from "./helpers.ts";

let key: string;
let tenantId: string;
let runner: { token: string };

async function jobCount(): Promise<number> {
  const row = await env.DB.prepare("SELECT count(*) AS n FROM jobs WHERE tenant_id = ?")
    .bind(tenantId)
    .first<{ n: number }>();
  return row!.n;
}

const images = (body: Record<string, unknown>, headers: Record<string, string> = {}) =>
  call("POST", "/v1/images/generations", { token: key, body: { prompt: "a small blue square", ...body }, headers });

/** `{ error: { message, type, param, code } }`, as OpenAI answers (and its clients parse). */
function expectOpenAIError(body: any, type: string, param: string | undefined, code?: string) {
  expect(typeof body.error.message).toBe("string");
  expect(body.error.type).toBe(type);
  expect(body.error.param).toBe(param);
  expect(typeof body.error.code).toBe("string");
  if (code) expect(body.error.code).toBe(code);
}

/** A PNG's signature and image header (what the edge reads of a control image), as a data: URL. */
function pngDataUrl(width: number, height: number, depth = 8): string {
  const b = new Uint8Array(33);
  b.set([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const v = new DataView(b.buffer);
  v.setUint32(8, 13);
  b.set([0x49, 0x48, 0x44, 0x52], 12);
  v.setUint32(16, width);
  v.setUint32(20, height);
  b.set([depth, 2, 0, 0, 0], 24);
  return `data:image/png;base64,${btoa(String.fromCharCode(...b))}`;
}

beforeAll(async () => {
  await registerModel();
  ({ key, id: tenantId } = await newTenant("openai"));
  runner = await newRunner("openai-runner");
});

describe("bad input → 400 in OpenAI's error shape, and no job", () => {
  it("size, n and prompt", async () => {
    const cases: Array<[Record<string, unknown>, string, string?]> = [
      [{ size: "0x0" }, "size"],
      [{ size: "7x7" }, "size", "invalid_size"],
      [{ size: "100000x1" }, "size"],
      [{ size: "5000x64" }, "size"],
      [{ size: "big" }, "size"],
      [{ size: "064x64" }, "size"],
      [{ n: 0 }, "n"],
      [{ n: 17 }, "n"],
      [{ n: 9 }, "n", "invalid_parameter"],
      [{ n: "two" }, "n"],
      [{ prompt: "" }, "prompt"],
      [{ prompt: "p".repeat(1001) }, "prompt"],
      [{ prompt: "a lone \ud800 surrogate" }, "prompt"],
      [{ negative_prompt: "\udc00" }, "negative_prompt"],
    ];
    const before = await jobCount();
    for (const [patch, param, code] of cases) {
      const r = await images(patch);
      expect(r.status, `${JSON.stringify(patch)} → ${r.status} ${JSON.stringify(r.body)}`).toBe(400);
      expectOpenAIError(r.body, "invalid_request_error", param, code);
    }
    expect(await jobCount()).toBe(before);
  });
});

describe("retries never make a second job", () => {
  /** One synchronous call, answered by the runner completing (or failing) the job it creates. */
  async function served(asked: Promise<any>, end: (leased: any) => Promise<unknown>) {
    const l = await lease(runner.token, { wait_ms: 5000 });
    expect(l.status, JSON.stringify(l.body)).toBe(200);
    await end(l.body);
    return asked;
  }

  it("the same Idempotency-Key answers with the same generation", async () => {
    const headers = { "idempotency-key": "openai-retry-1" };
    const first = await served(images({ seed: 1 }, headers), (l) => completeLeased(runner.token, l));
    expect(first.status, JSON.stringify(first.body)).toBe(200);
    const count = await jobCount();
    const again = await images({ seed: 1 }, headers);
    expect(again.status).toBe(200);
    expect(again.body.generation_id).toBe(first.body.generation_id);
    expect(await jobCount()).toBe(count);
  });

  it("a client's automatic retry (X-Stainless-Retry-Count) of the same body gets the first attempt's job", async () => {
    const first = await served(images({ seed: 2 }, { "x-stainless-retry-count": "0" }), (l) =>
      completeLeased(runner.token, l),
    );
    expect(first.status).toBe(200);
    const count = await jobCount();
    const retried = await images({ seed: 2 }, { "x-stainless-retry-count": "1" });
    expect(retried.status).toBe(200);
    expect(retried.body.generation_id).toBe(first.body.generation_id);
    expect(await jobCount()).toBe(count);
    // A fresh call (not a retry) with the same body is a new generation.
    const fresh = served(images({ seed: 2 }, { "x-stainless-retry-count": "0" }), (l) =>
      completeLeased(runner.token, l),
    );
    expect((await fresh).body.generation_id).not.toBe(first.body.generation_id);
    expect(await jobCount()).toBe(count + 1);
  });

  it("a generation that fails on its input answers 400, not a 500 to retry; the retry gets the same answer", async () => {
    const fail = (l: any) =>
      call("POST", `/internal/v1/jobs/${l.job.id}/fail`, {
        token: runner.token,
        body: {
          lease_id: l.lease_id,
          error: { code: "control_image_invalid", message: "controlnets[0].image: PNG colour type 5 is not supported" },
          retryable: false,
        },
      });
    const first = await served(images({ seed: 3 }), fail);
    expect(first.status, JSON.stringify(first.body)).toBe(400);
    expectOpenAIError(first.body, "invalid_request_error", undefined, "control_image_invalid");
    expect(first.headers.get("x-should-retry")).toBe("false");
    const count = await jobCount();
    const retried = await images({ seed: 3 }, { "x-stainless-retry-count": "1" });
    expect(retried.status).toBe(400);
    expect(retried.body.error.code).toBe("control_image_invalid");
    expect(await jobCount()).toBe(count);
  });
});

describe("inputs checked at the door (issue 20, defect 10)", () => {
  it("refuses control images the runner would refuse, and lone surrogates, with 400", async () => {
    const cn = (image: string) => ({ controlnets: [{ id: "addon_doesnotexist", image }] });
    const cases: Array<[Record<string, unknown>, string, RegExp]> = [
      [cn("data:image/png;base64,AAAA"), "controlnets[0].image", /not a PNG/],
      [cn("data:image/png;base64,iVBORw0KGgo="), "controlnets[0].image", /truncated/],
      [cn("data:image/png;base64,iVBORw0KGgo"), "controlnets[0].image", /truncated/],
      [cn("data:image/png;base64,!!!!"), "controlnets[0].image", /data:image\/png;base64/],
      [cn(pngDataUrl(64, 64, 16)), "controlnets[0].image", /bit depth 16/],
      [cn(pngDataUrl(5000, 5000)), "controlnets[0].image", /pixels/],
      [cn("https://example.com/mask.png"), "controlnets[0].image", /https URLs are not fetched/],
      [{ prompt: "\ud83d" }, "prompt", /surrogate/],
      [{ negative_prompt: "ok \udfff" }, "negative_prompt", /surrogate/],
    ];
    const before = await jobCount();
    for (const [patch, param, message] of cases) {
      const r = await generate(key, patch);
      expect(r.status, `${JSON.stringify(patch).slice(0, 80)} → ${JSON.stringify(r.body)}`).toBe(400);
      expect(r.body.error.param).toBe(param);
      expect(r.body.error.message).toMatch(message);
    }
    expect(await jobCount()).toBe(before);
    // A plain PNG passes the door (and then meets the unknown add-on); so does a paired surrogate (an emoji).
    const ok = await generate(key, { prompt: "a \ud83d\udfe6 square", ...cn(pngDataUrl(64, 64)) });
    expect(ok.status, JSON.stringify(ok.body)).toBe(404);
    expect(ok.body.error.code).toBe("addon_not_found");
  });
});
