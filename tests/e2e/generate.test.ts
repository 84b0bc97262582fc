import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodePng } from "@imagegen/gpu-runner/png";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { encodeSafetensors } from "@imagegen/formats/safetensors";
import { writeTar } from "@imagegen/formats/tar";
import { ImageEvaluator } from "@imagegen/gpu-runner/evaluator";
import { AuthenticationError, ImageGen, NotFoundError } from "@imagegen/sdk";
import OpenAI from "openai";
import { Webhook } from "standardwebhooks";
import { api, presignGet, startStack, type Stack } from "./stack.ts";

let stack: Stack;

beforeAll(async () => {
  stack = await startStack({ runners: 1 });
});
afterAll(async () => {
  await stack?.stop();
});

/** A 64×64 control image as a PNG data URL: white where `inside(x, y)`, black elsewhere. */
function maskPng(inside: (x: number, y: number) => boolean): string {
  const rgb = new Uint8Array(64 * 64 * 3);
  for (let i = 0; i < 64 * 64; i++) if (inside(i % 64, Math.floor(i / 64))) rgb.fill(255, i * 3, i * 3 + 3);
  return `data:image/png;base64,${Buffer.from(encodePng(rgb, 64, 64)).toString("base64")}`;
}

function pngSize(bytes: Uint8Array): { width: number; height: number } {
  expect([...bytes.subarray(0, 8)]).toEqual([137, 80, 78, 71, 13, 10, 26, 10]);
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

describe("the whole stack, on loopback", () => {
  it("POST /v1/generations → a runner generates → a downloadable PNG behind a signed URL", async () => {
    const started = performance.now();
    const r = await api(
      stack,
      "POST",
      "/v1/generations",
      stack.apiKey,
      { model: stack.defaultModel, prompt: "a large red circle on the left, blue background", n: 2, seed: 42 },
      { prefer: "wait=60" },
    );
    const elapsed = performance.now() - started;
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.status).toBe("succeeded");
    expect(r.body.images).toHaveLength(2);
    for (const img of r.body.images) {
      const res = await fetch(img.url);
      expect(res.status).toBe(200);
      const bytes = new Uint8Array(await res.arrayBuffer());
      expect(pngSize(bytes)).toEqual({ width: 64, height: 64 });
      expect(createHash("sha256").update(bytes).digest("hex")).toBe(img.sha256);
      expect(bytes.byteLength).toBe(img.size_bytes);
    }
    expect(r.body.images.map((i: any) => i.seed)).toEqual([42, 43]);
    expect(r.body.provenance.model).toBe(stack.defaultModel);
    expect(r.body.provenance.model_manifest_sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(r.body.timings.inference_ms).toBeGreaterThan(0);
    console.log(`request → downloadable URL: ${elapsed.toFixed(0)} ms; edge timings ${JSON.stringify(r.body.timings)}`);
  });

  it("a generation with two LoRAs and a ControlNet: add-ons fetched, verified and applied by the runner", async () => {
    // The published demo add-ons of a family (the default model's when it has two LoRAs and a ControlNet).
    const addons = (await api(stack, "GET", "/v1/addons", stack.apiKey)).body.data;
    const models = (await api(stack, "GET", "/v1/models", stack.apiKey)).body.data;
    const ofFamily = (family: string) => ({
      loras: addons.filter((a: any) => a.kind === "lora" && a.family === family).slice(0, 2),
      controlnet: addons.find((a: any) => a.kind === "controlnet" && a.family === family),
    });
    const model = [...models]
      .sort((a: any, b: any) => Number(b.id === stack.defaultModel) - Number(a.id === stack.defaultModel))
      .find((m: any) => ofFamily(m.family).loras.length === 2 && ofFamily(m.family).controlnet);
    expect(
      model,
      `no model family with two LoRAs and a ControlNet among ${JSON.stringify(addons.map((a: any) => [a.name, a.family]))}`,
    ).toBeDefined();
    const { loras, controlnet } = ofFamily(model.family);
    const image = maskPng((x, y) => y >= 16 && y < 48 && x >= 8 && x < 32);
    const body = {
      model: model.id,
      prompt: "a large red circle on the left, blue background",
      seed: 9,
      sampler: "ddim",
      steps: 8,
    };
    const plain = await api(stack, "POST", "/v1/generations", stack.apiKey, body, { prefer: "wait=60" });
    const styled = await api(
      stack,
      "POST",
      "/v1/generations",
      stack.apiKey,
      {
        ...body,
        loras: loras.map((l: any) => ({ id: l.id, scale: 0.8 })),
        controlnets: [{ id: controlnet.id, image, scale: 1 }],
      },
      { prefer: "wait=60" },
    );
    expect(styled.status, JSON.stringify(styled.body)).toBe(200);
    expect(styled.body.status).toBe("succeeded");
    expect(styled.body.provenance.addons.map((a: any) => a.ref).sort()).toEqual(
      [...loras, controlnet].map((a: any) => `${a.id}@1`).sort(),
    );
    expect(styled.body.timings.addon_load_ms).toBeGreaterThan(0);
    const [a, b] = await Promise.all(
      [plain, styled].map(async (g) => new Uint8Array(await (await fetch(g.body.images[0].url)).arrayBuffer())),
    );
    expect(pngSize(b!)).toEqual({ width: 64, height: 64 });
    // Same seed and prompt: only the add-ons can make the images differ.
    expect(createHash("sha256").update(a!).digest("hex")).not.toBe(createHash("sha256").update(b!).digest("hex"));
    // A second use finds them warm (the edge routes by them too).
    const again = await api(
      stack,
      "POST",
      "/v1/generations",
      stack.apiKey,
      { ...body, seed: 10, loras: loras.map((l: any) => ({ id: l.id, scale: 0.8 })) },
      { prefer: "wait=60" },
    );
    expect(again.body.status).toBe("succeeded");
    const bad = await api(
      stack,
      "POST",
      "/v1/generations",
      stack.apiKey,
      { ...body, controlnets: [{ id: controlnet.id, image: "data:image/png;base64,AAAA", scale: 1 }] },
      { prefer: "wait=60" },
    );
    // Refused at the door (issue 20, defect 10), not failed later at the runner.
    expect(bad.status).toBe(400);
    expect(bad.body.error.param).toBe("controlnets[0].image");
    expect(bad.body.error.message).toMatch(/controlnets\[0\]\.image: not a PNG/);
  });

  it("on the trained default model, the mask ControlNet places the prompted shape and two style LoRAs add their styles (evaluator)", async (ctx) => {
    const addons = (await api(stack, "GET", "/v1/addons", stack.apiKey)).body.data;
    const family = (await api(stack, "GET", `/v1/models/${stack.defaultModel}`, stack.apiKey)).body.family;
    const named = (name: string) => addons.find((a: any) => a.name === name && a.family === family);
    // Outlined and pastel: the pair whose stack the zoo measures at 0.84 (REPORT.md; striped + pastel 0.93), the one
    // whose two styles change the same pixels (pastel pales the outline that outlined draws).
    const [outlined, pastel, mask] = [named("lora-outlined"), named("lora-pastel"), named("controlnet-mask")];
    if (!outlined || !pastel || !mask) return ctx.skip(); // the zoo has not exported the trained add-ons
    const ev = await ImageEvaluator.load();
    try {
      // Held-out prompts (never trained on), each with its own held-out shape mask as the control image.
      const picks = ev.heldout.slice(0, 4);
      const controlPng = (index: number) => {
        const m = ev.heldoutMask(index);
        return maskPng((x, y) => m[y * 64 + x] !== 0);
      };
      const generate = (styled: boolean) =>
        Promise.all(
          picks.map(async (p) => {
            const g = await api(
              stack,
              "POST",
              "/v1/generations",
              stack.apiKey,
              {
                model: stack.defaultModel,
                prompt: styled ? `${p.prompt}, outlined pastel` : p.prompt,
                seed: 100 + p.index,
                sampler: "ddim",
                steps: 25,
                loras: styled
                  ? [
                      { id: outlined.id, scale: 1 },
                      { id: pastel.id, scale: 1 },
                    ]
                  : [],
                controlnets: [{ id: mask.id, image: controlPng(p.index), scale: 1 }],
              },
              { prefer: "wait=90" },
            );
            expect(g.body.status, JSON.stringify(g.body.error)).toBe("succeeded");
            return new Uint8Array(await (await fetch(g.body.images[0].url)).arrayBuffer());
          }),
        );
      const [styled, plain] = [await generate(true), await generate(false)];
      const opts = { styles: ["outlined", "pastel"] };
      const [scores, plainScores] = [
        await ev.score(
          styled,
          picks.map((p) => p.attributes),
          opts,
        ),
        await ev.score(
          plain,
          picks.map((p) => p.attributes),
          opts,
        ),
      ];
      // Mask IoU segments by the prompted colours, which pastel changes and outlined hollows out: the ControlNet and
      // the prompt are judged on the unstyled images, the LoRAs by what they add to the same images.
      const ious = plain.map((png, i) => ev.maskIoU(png, picks[i]!.index));
      console.log(
        `evaluator, mask ControlNet on 4 held-out prompts: ${JSON.stringify(plainScores.accuracy)}, mask IoU ${ious.map((x) => x.toFixed(2)).join(" ")}; ` +
          `with outlined + pastel LoRAs: ${JSON.stringify(scores.accuracy)}, styles ${JSON.stringify(scores.styleRates)} (without ${JSON.stringify(plainScores.styleRates)})`,
      );
      // Zoo targets on 256 prompts: attributes >= 0.90, mask IoU >= 0.75 (both met there). Four images at 25
      // steps get a margin below those.
      expect(plainScores.mean).toBeGreaterThanOrEqual(0.8);
      expect(ious.reduce((a, b) => a + b, 0) / ious.length).toBeGreaterThanOrEqual(0.6);
      // Four images at 25 steps are too few to hold to the detection targets (REPORT.md, 256 prompts at DDIM-50:
      // outlined 0.926, pastel 1.00 alone, stacked 0.84), so what this asserts is that they work through the whole
      // stack: the styles are detected more often with them than without them on the same prompts, seeds and
      // control images.
      const detected = (s: typeof scores) => s.styleRates.outlined! + s.styleRates.pastel!;
      expect(detected(scores)).toBeGreaterThan(detected(plainScores));
    } finally {
      await ev.release();
    }
  });

  it("the TypeScript SDK drives the same API: generate and wait, pages, add-on upload, keys, typed errors", async () => {
    const client = new ImageGen({ apiKey: stack.apiKey, baseURL: stack.edgeUrl });
    const g = await client.generations.createAndWait({
      model: stack.defaultModel,
      prompt: "a small blue square at the top",
      seed: 21,
    });
    expect(g.status).toBe("succeeded");
    expect((await fetch(g.images[0]!.url!)).status).toBe(200);
    const followed = await client.generations.create({
      model: stack.defaultModel,
      prompt: "a small red square",
      seed: 3,
      sampler: "ddim",
      steps: 30,
    });
    const states: string[] = [];
    for await (const update of client.generations.events(followed.id)) states.push(update.status);
    expect(states[0]).toMatch(/queued|running/);
    expect(states.at(-1)).toBe("succeeded");
    const seen: string[] = [];
    for await (const item of client.generations.iterate({ limit: 2 })) seen.push(item.id);
    expect(seen).toContain(g.id);
    expect(new Set(seen).size).toBe(seen.length);

    const spec = (await client.models.get(stack.defaultModel)).spec;
    const t = spec.lora_targets![0]!;
    const prefix = `lora_unet_${t.module.replace(/\./g, "_")}`;
    const file = encodeSafetensors({
      [`${prefix}.lora_down.weight`]: {
        shape: [2, t.in_features],
        data: Float32Array.from({ length: 2 * t.in_features }, (_, i) => Math.sin(i)),
      },
      [`${prefix}.lora_up.weight`]: {
        shape: [t.out_features, 2],
        data: Float32Array.from({ length: 2 * t.out_features }, (_, i) => 2 * Math.cos(i)),
      },
    });
    const up = await client.addons.upload(file, {
      kind: "lora",
      name: "sdk-style",
      family: (await client.models.get(stack.defaultModel)).family,
    });
    expect(up.version.status).toBe("ready");
    const styled = await client.generations.createAndWait({
      model: stack.defaultModel,
      prompt: "a small blue square at the top",
      seed: 21,
      loras: [{ id: up.addon.id, scale: 1 }],
    });
    expect(styled.images[0]!.sha256).not.toBe(g.images[0]!.sha256);

    const key = await client.keys.create({ name: "sdk" });
    expect(key.secret).toMatch(/^igk_/);
    await client.keys.revoke(key.id);
    await expect(new ImageGen({ apiKey: key.secret, baseURL: stack.edgeUrl }).models.list()).rejects.toBeInstanceOf(
      AuthenticationError,
    );
    await expect(client.generations.get("gen_00000000000000000000000000")).rejects.toBeInstanceOf(NotFoundError);
    await expect(client.generations.create({ prompt: "" })).rejects.toMatchObject({ status: 400, param: "prompt" });
  });

  it("a tenant uploads its own ControlNet (a tar of the bundle) through the SDK; it is validated and steers generation", async () => {
    const client = new ImageGen({ apiKey: stack.apiKey, baseURL: stack.edgeUrl });
    const model = await client.models.get(stack.defaultModel);
    const dir = join(
      fileURLToPath(new URL("../../gpu-runner/models", import.meta.url)),
      model.family === "tiny-shapes"
        ? "tiny-shapes/addons/controlnet-mask"
        : "tiny-shapes-random/addons/random-controlnet-mask",
    );
    const manifest = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
    const tar = writeTar([
      { path: "manifest.json", data: readFileSync(join(dir, "manifest.json")) },
      { path: manifest.components.controlnet.path, data: readFileSync(join(dir, manifest.components.controlnet.path)) },
    ]);
    const up = await client.addons.upload(tar, { kind: "controlnet", name: "my-mask", family: model.family });
    expect(up.version.status, up.version.rejection_reason ?? "").toBe("ready");
    expect(up.version.details).toMatchObject({ format: "tar", residuals: Object.keys(manifest.residuals).length });
    // The same mask on the left and on the right of the image: the ControlNet moves the shape with it.
    const mask = (left: boolean) =>
      maskPng((x, y) => y >= 20 && y < 44 && x >= (left ? 4 : 36) && x < (left ? 28 : 60));
    // Eight seeds per side, one request each (image i uses seed + i).
    const gen = (left: boolean) =>
      client.generations.createAndWait({
        model: stack.defaultModel,
        prompt: "a red square, blue background",
        n: 8,
        seed: 100,
        controlnets: [{ id: up.addon.id, image: mask(left), scale: 1 }],
      });
    const [a, b] = await Promise.all([gen(true), gen(false)]);
    expect(a.status).toBe("succeeded");
    expect(b.status).toBe("succeeded");
    expect(a.images[0]!.sha256).not.toBe(b.images[0]!.sha256);
    if (model.family === "tiny-shapes") {
      // On the trained model the prompt names no position or size and the mask moves from left to right: the
      // square's centre (pixels nearer the prompted red than the blue background) moves with it, and the evaluator
      // reads the position from the mask. REPORT.md, prompts that name no position: mask IoU 0.649 with the
      // ControlNet, 0.165 without, position right 86% of the time, so a seed may miss: the test takes eight and
      // asserts the mean shift is more than half the 32 pixels between the masks. (The first ControlNet, trained
      // without such captions, moved one square by 1.5 pixels here.)
      const ev = await ImageEvaluator.load();
      const pngs = async (g: typeof a) =>
        Promise.all(g.images.map(async (img) => new Uint8Array(await (await fetch(img.url!)).arrayBuffer())));
      const [lefts, rights] = [await pngs(a), await pngs(b)];
      const centreX = (png: Uint8Array) => {
        const seg = ev.segment(png, "red", "blue");
        let sum = 0,
          n = 0;
        seg.forEach((v, i) => v && ((sum += i % 64), n++));
        return sum / Math.max(n, 1);
      };
      const mean = (xs: number[]) => xs.reduce((p, q) => p + q, 0) / xs.length;
      const [left, right] = [mean(lefts.map(centreX)), mean(rights.map(centreX))];
      const onRight = (await ev.predict(rights)).filter((p) => p.attributes.position === "right").length;
      console.log(
        `square centre x over 8 seeds: mask on the left ${left.toFixed(1)}, on the right ${right.toFixed(1)} (mask centres 16 and 48); evaluator finds ${onRight} of 8 on the right`,
      );
      await ev.release();
      expect(right - left).toBeGreaterThan(16);
      expect(onRight).toBeGreaterThan(4);
    }
    // A tar whose manifest names another family is rejected with the reason.
    const wrong = writeTar([
      { path: "manifest.json", data: Buffer.from(JSON.stringify({ ...manifest, family: "other-family" })) },
      { path: manifest.components.controlnet.path, data: readFileSync(join(dir, manifest.components.controlnet.path)) },
    ]);
    const bad = await client.addons.upload(wrong, { kind: "controlnet", name: "my-mask-wrong", family: model.family });
    expect(bad.version.status).toBe("rejected");
    expect(bad.version.rejection_reason).toMatch(/family 'other-family'/);
  });

  it("the official openai client works against /v1/images/generations, with our extensions", async () => {
    const oa = new OpenAI({ apiKey: stack.apiKey, baseURL: `${stack.edgeUrl}/v1`, maxRetries: 0 });
    const params = {
      model: stack.defaultModel,
      prompt: "a large green triangle on the right",
      size: "64x64",
      n: 2,
      seed: 77,
    } as const;
    const urls = await oa.images.generate(params as unknown as OpenAI.ImageGenerateParamsNonStreaming);
    expect(urls.data).toHaveLength(2);
    const first = new Uint8Array(await (await fetch(urls.data![0]!.url!)).arrayBuffer());
    expect(pngSize(first)).toEqual({ width: 64, height: 64 });
    const b64 = await oa.images.generate({
      ...params,
      response_format: "b64_json",
    } as unknown as OpenAI.ImageGenerateParamsNonStreaming);
    // Same seed, same model: the same bytes, now inline.
    expect(Buffer.from(b64.data![0]!.b64_json!, "base64").equals(Buffer.from(first))).toBe(true);
    const bad = await oa.images
      .generate({ ...params, size: "100x100" } as unknown as OpenAI.ImageGenerateParamsNonStreaming)
      .catch((e) => e);
    expect(bad).toBeInstanceOf(OpenAI.BadRequestError);
    expect(bad.param).toBe("size"); // the OpenAI request names a size, not a width (issue 22)
    const wrongKey = await new OpenAI({ apiKey: "igk_nope", baseURL: `${stack.edgeUrl}/v1`, maxRetries: 0 }).images
      .generate({ prompt: "x" })
      .catch((e) => e);
    expect(wrongKey).toBeInstanceOf(OpenAI.AuthenticationError);
  });

  it("webhooks reach the request's webhook_url and a registered endpoint, verified by the official Standard Webhooks library, retried without a cron", async () => {
    const received: Array<{ path: string; headers: Record<string, string>; body: string }> = [];
    const receiver = createServer((req, res) => {
      let body = "";
      req.on("data", (d) => (body += d));
      req.on("end", () => {
        received.push({ path: req.url!, headers: req.headers as Record<string, string>, body });
        const forPath = received.filter((r) => r.path === req.url).length;
        res.writeHead(req.url === "/hooks" && forPath === 1 ? 500 : 204).end(); // the first attempt fails: retried below
      });
    });
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r));
    const base = `http://127.0.0.1:${(receiver.address() as { port: number }).port}`;
    const waitFor = async (n: number, path: string, ms: number) => {
      const deadline = Date.now() + ms;
      while (received.filter((r) => r.path === path).length < n && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 50));
      return received.filter((r) => r.path === path);
    };
    try {
      const secret = (await api(stack, "GET", "/v1/webhooks/secret", stack.apiKey)).body.secret as string;
      const endpoint = (
        await api(stack, "POST", "/v1/webhooks/endpoints", stack.apiKey, {
          url: `${base}/endpoint`,
          events: ["generation.succeeded"],
        })
      ).body;
      const g = await api(
        stack,
        "POST",
        "/v1/generations",
        stack.apiKey,
        { model: stack.defaultModel, prompt: "a small red circle", seed: 8, webhook_url: `${base}/hooks` },
        { prefer: "wait=60" },
      );
      expect(g.body.status).toBe("succeeded");
      const [first] = await waitFor(1, "/hooks", 10_000);
      const payload = new Webhook(secret).verify(first!.body, first!.headers) as any;
      expect(payload).toMatchObject({ type: "generation.succeeded", data: { id: g.body.id, status: "succeeded" } });
      expect(payload.data.images[0].sha256).toBe(g.body.images[0].sha256);
      const [atEndpoint] = await waitFor(1, "/endpoint", 10_000);
      expect(new Webhook(endpoint.secret).verify(atEndpoint!.body, atEndpoint!.headers)).toMatchObject({
        type: "generation.succeeded",
        data: { id: g.body.id },
      });
      expect(() => new Webhook(secret).verify(atEndpoint!.body, atEndpoint!.headers)).toThrow();
      await api(stack, "DELETE", `/v1/webhooks/endpoints/${endpoint.id}`, stack.apiKey);

      // The failed first attempt comes again by itself after the first backoff (5 s ± 20%): wrangler dev runs no cron.
      const attempts = await waitFor(2, "/hooks", 20_000);
      expect(attempts).toHaveLength(2);
      expect(attempts[1]!.headers["webhook-id"]).toBe(first!.headers["webhook-id"]);
      expect(new Webhook(secret).verify(attempts[1]!.body, attempts[1]!.headers)).toMatchObject({ id: payload.id });
      const deliveries = (await api(stack, "GET", "/v1/webhooks/deliveries", stack.apiKey)).body.data;
      const d = deliveries.find((x: any) => x.generation_id === g.body.id && x.endpoint_id === null);
      expect(d).toMatchObject({
        id: first!.headers["webhook-id"],
        status: "delivered",
        attempts: 2,
        last_response_status: 204,
      });
      const again = await api(stack, "POST", `/v1/webhooks/deliveries/${d.id}/redeliver`, stack.apiKey);
      expect(again.body).toMatchObject({ status: "delivered", attempts: 3, last_response_status: 204 });
      expect(await waitFor(3, "/hooks", 1_000)).toHaveLength(3);
    } finally {
      receiver.close();
    }
  });

  it("the store refuses tampered, misdirected and expired URLs", async () => {
    const r = await api(
      stack,
      "POST",
      "/v1/generations",
      stack.apiKey,
      { model: stack.defaultModel, prompt: "a small green square at the top", seed: 1 },
      { prefer: "wait=60" },
    );
    const url = new URL(r.body.images[0].url);
    expect((await fetch(url)).status).toBe(200);
    const tampered = new URL(url);
    tampered.searchParams.set("X-Amz-Signature", "0".repeat(64));
    expect((await fetch(tampered)).status).toBe(403);
    const elsewhere = new URL(url);
    elsewhere.pathname = elsewhere.pathname.replace(/\/0\.png$/, "/1.png");
    expect((await fetch(elsewhere)).status).toBe(403);
    const longer = new URL(url);
    longer.searchParams.set("X-Amz-Expires", "604800");
    expect((await fetch(longer)).status).toBe(403);
    // The API signs for at least 60 s; sign this object for 1 s the same way and use it after 2 s.
    const key = decodeURIComponent(url.pathname).replace(/^.*\/imagegen\//, "");
    const brief = await presignGet(stack, key, 1);
    expect((await fetch(brief)).status).toBe(200);
    await new Promise((r) => setTimeout(r, 2_200));
    expect((await fetch(brief)).status).toBe(403);
  });

  it("tenant B cannot read or re-sign tenant A's image", async () => {
    const t = await api(stack, "POST", "/admin/v1/tenants", stack.adminToken, { name: "tenant-b" });
    const k = await api(stack, "POST", `/admin/v1/tenants/${t.body.id}/keys`, stack.adminToken, {});
    const a = await api(
      stack,
      "POST",
      "/v1/generations",
      stack.apiKey,
      { model: stack.defaultModel, prompt: "a large blue triangle in the center", seed: 3 },
      { prefer: "wait=60" },
    );
    expect(a.body.status).toBe("succeeded");
    expect((await api(stack, "GET", `/v1/generations/${a.body.id}`, k.body.secret)).status).toBe(404);
    expect((await api(stack, "POST", `/v1/generations/${a.body.id}/images/0/url`, k.body.secret, {})).status).toBe(404);
    const list = await api(stack, "GET", "/v1/generations", k.body.secret);
    expect(list.body.data).toEqual([]);
  });
});
