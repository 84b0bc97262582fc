import { env, exports } from "cloudflare:workers";
import parsePrometheusTextFormat from "parse-prometheus-text-format";
import { beforeAll, describe, expect, it } from "vitest";
import { formatExposition } from "../src/metrics/exposition.ts";
import {
  ADMIN,
  acknowledge,
  call,
  completeLeased,
  generate,
  leaseUnacked,
  newRunner,
  newTenant,
  registerModel,
} from "./helpers.ts";

const worker = (exports as unknown as { default: Fetcher }).default;

async function scrape(token: string | null = ADMIN) {
  const res = await worker.fetch(
    new Request("http://edge.test/admin/v1/metrics", { headers: token ? { authorization: `Bearer ${token}` } : {} }),
  );
  return { status: res.status, type: res.headers.get("content-type"), text: await res.text() };
}

/** One sample's value, by metric name and labels, as a real Prometheus text parser reads the body. */
async function metrics() {
  const r = await scrape();
  expect(r.status).toBe(200);
  const families = parsePrometheusTextFormat(r.text);
  return (name: string, labels: Record<string, string> = {}) => {
    const family = families.find((f) => f.name === name);
    if (!family) throw new Error(`no metric ${name} in:\n${r.text}`);
    const sample = family.metrics.find((m) => Object.entries(labels).every(([k, v]) => m.labels?.[k] === v));
    if (!sample) throw new Error(`no sample ${name}${JSON.stringify(labels)} in:\n${r.text}`);
    return Number(sample.value);
  };
}

const SAMPLE_LINE =
  /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/;

beforeAll(async () => {
  await registerModel("tiny-shapes");
  await registerModel("tiny-shapes-lcm");
});

describe("GET /admin/v1/metrics", () => {
  it("is for the operator only", async () => {
    expect((await scrape(null)).status).toBe(401);
    expect((await scrape("not-the-admin-token")).status).toBe(401);
    const t = await newTenant("metrics-tenant");
    expect((await scrape(t.key)).status).toBe(401);
  });

  it("speaks the Prometheus text format 0.0.4: HELP and TYPE before each family's samples", async () => {
    const r = await scrape();
    expect(r.type).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(r.text.endsWith("\n")).toBe(true);
    const typed = new Map<string, string>();
    let helped = "";
    for (const line of r.text.trimEnd().split("\n")) {
      const help = line.match(/^# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) \S.*$/);
      const type = line.match(/^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (gauge|counter)$/);
      if (help) {
        expect(typed.has(help[1]!), `${help[1]} declared twice`).toBe(false);
        helped = help[1]!;
      } else if (type) {
        expect(type[1], "TYPE follows its HELP").toBe(helped);
        typed.set(type[1]!, type[2]!);
      } else {
        expect(line, "a sample line").toMatch(SAMPLE_LINE);
        const name = line.split(/[{ ]/)[0]!;
        expect(typed.has(name), `${name} has a TYPE before its samples`).toBe(true);
        if (typed.get(name) === "counter") expect(name).toMatch(/_total$/);
      }
    }
    const parsed = parsePrometheusTextFormat(r.text);
    expect(parsed.map((f) => f.name).sort()).toEqual([...typed.keys()].sort());
    for (const f of parsed) expect(f.type).toBe(typed.get(f.name)!.toUpperCase());
    // Every registered model reads zero rather than being absent, so an autoscaler's sum is never empty.
    const depth = parsed.find((f) => f.name === "imagegen_queue_depth")!;
    expect(depth.metrics.map((m) => m.labels?.model).sort()).toEqual(["tiny-shapes", "tiny-shapes-lcm"]);
  });

  it("follows the queue as jobs are queued, leased, acknowledged, finished and canceled", async () => {
    const t = await newTenant("metrics-queue", { max_concurrent_jobs: 50 });
    const model = { model: "tiny-shapes" };
    const initial = await metrics();
    const depth0 = initial("imagegen_queue_depth", model);
    const succeeded0 = initial("imagegen_jobs_finished_total", { status: "succeeded" });
    const canceled0 = initial("imagegen_jobs_finished_total", { status: "canceled" });
    const created0 = initial("imagegen_jobs_created_total");

    const jobs = [];
    for (let i = 0; i < 3; i++) jobs.push(await generate(t.key, { seed: i, n: 2 }));
    expect(jobs.every((j) => j.status === 202)).toBe(true);
    let m = await metrics();
    expect(m("imagegen_queue_depth", model)).toBe(depth0 + 3);
    expect(m("imagegen_queue_images", model)).toBeGreaterThanOrEqual(6);
    expect(m("imagegen_queue_depth", { model: "tiny-shapes-lcm" })).toBe(0);
    expect(m("imagegen_jobs_created_total")).toBe(created0 + 3);

    // The oldest job's age is read from its creation time.
    await env.DB.prepare("UPDATE jobs SET created_at = ? WHERE id = ?")
      .bind(Date.now() - 120_000, jobs[0]!.body.id)
      .run();
    m = await metrics();
    expect(m("imagegen_queue_oldest_age_seconds", model)).toBeGreaterThanOrEqual(120);
    expect(m("imagegen_queue_oldest_age_seconds", { model: "tiny-shapes-lcm" })).toBe(0);

    // A runner that polls is live; one registered that never polled is not.
    const runner = await newRunner("metrics-runner", 4);
    const live0 = m("imagegen_runners_live");
    const leased0 = m("imagegen_jobs_leased", model);
    const leased = await leaseUnacked(runner.token);
    expect(leased.status).toBe(200);
    m = await metrics();
    expect(m("imagegen_queue_depth", model)).toBe(depth0 + 2);
    expect(m("imagegen_jobs_leased", model)).toBe(leased0 + 1);
    expect(m("imagegen_jobs_leased_acknowledged", model)).toBe(leased0);
    expect(m("imagegen_runners_live")).toBe(live0 + 1);
    expect(m("imagegen_runners_live_capacity")).toBeGreaterThanOrEqual(4);

    expect((await acknowledge(runner.token, leased.body)).status).toBe(200);
    m = await metrics();
    expect(m("imagegen_jobs_leased_acknowledged", model)).toBe(leased0 + 1);

    expect((await completeLeased(runner.token, leased.body)).status).toBe(200);
    expect((await call("POST", `/v1/generations/${jobs[1]!.body.id}/cancel`, { token: t.key })).status).toBe(200);
    m = await metrics();
    expect(m("imagegen_jobs_leased", model)).toBe(leased0);
    expect(m("imagegen_queue_depth", model)).toBe(depth0 + 1);
    expect(m("imagegen_jobs_finished_total", { status: "succeeded" })).toBe(succeeded0 + 1);
    expect(m("imagegen_jobs_finished_total", { status: "canceled" })).toBe(canceled0 + 1);

    // Silent for longer than the live window and holding no lease: no longer live, still registered.
    await env.DB.prepare("UPDATE runners SET last_seen_at = ? WHERE id = ?")
      .bind(Date.now() - 10 * 60_000, runner.id)
      .run();
    m = await metrics();
    expect(m("imagegen_runners_live")).toBe(live0);
    expect(m("imagegen_runners_registered")).toBeGreaterThanOrEqual(1);
  });
});

describe("formatExposition", () => {
  it("escapes label values and help text as the format requires", () => {
    const text = formatExposition([
      {
        name: "x_total",
        help: 'a \\ help\nline "quoted"',
        type: "counter",
        samples: [{ labels: { path: 'C:\\dir\n"f"' }, value: 2 }],
      },
    ]);
    expect(text).toBe(
      '# HELP x_total a \\\\ help\\nline "quoted"\n# TYPE x_total counter\nx_total{path="C:\\\\dir\\n\\"f\\""} 2\n',
    );
    const [family] = parsePrometheusTextFormat(text);
    expect(family!.metrics[0]!.labels!.path).toBe('C:\\dir\n"f"');
  });

  it("refuses invalid names and counters without _total", () => {
    const g = { help: "h", type: "gauge" as const, samples: [{ value: 1 }] };
    expect(() => formatExposition([{ ...g, name: "1bad" }])).toThrow(/Invalid metric name/);
    expect(() => formatExposition([{ ...g, name: "ok", samples: [{ labels: { "a-b": "v" }, value: 1 }] }])).toThrow(
      /Invalid label name/,
    );
    expect(() => formatExposition([{ ...g, name: "jobs", type: "counter" }])).toThrow(/_total/);
    expect(() =>
      formatExposition([
        { ...g, name: "a" },
        { ...g, name: "a" },
      ]),
    ).toThrow(/twice/);
  });
});
