/// <reference types="vite/client" />
import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { encodeSafetensors, parseHeader } from "@imagegen/formats/safetensors";
import { findNonFinite } from "../src/addons/validate.ts";
import { writeTar } from "@imagegen/formats/tar";
import cnManifest from "../../gpu-runner/models/tiny-shapes-random/addons/random-controlnet-mask/manifest.json";
import cnOnnxUrl from "../../gpu-runner/models/tiny-shapes-random/addons/random-controlnet-mask/controlnet/model.onnx?url&inline";
import { sha256Hex } from "../src/lib/crypto.ts";
import { call, generate, newTenant, registerModel, TINY_SPEC } from "./helpers.ts";

beforeAll(async () => {
  await registerModel();
  await registerModel("tiny-shapes-random", "tiny-shapes-random");
});

/** A kohya-format LoRA for the test model's targets (see TINY_SPEC); `kernel` 3 writes a LoCon 3×3 down kernel. */
function kohyaLora(rank = 4, module = "lora_unet_down_blocks_0_attentions_0_to_q", inF = 8, outF = 8, kernel = 1) {
  const k = kernel > 1 ? [kernel, kernel] : [];
  return encodeSafetensors({
    [`${module}.lora_down.weight`]: {
      shape: [rank, inF, ...k],
      data: new Float32Array(rank * inF * kernel * kernel).fill(0.01),
    },
    [`${module}.lora_up.weight`]: {
      shape: [outF, rank, ...(kernel > 1 ? [1, 1] : [])],
      data: new Float32Array(outF * rank).fill(0.02),
    },
    [`${module}.alpha`]: { shape: [], data: Float32Array.from([rank]) },
  });
}

async function startUpload(key: string, file: Uint8Array, patch: Record<string, unknown> = {}) {
  return call("POST", "/v1/addons", {
    token: key,
    body: {
      kind: "lora",
      name: "style",
      family: "tiny-shapes",
      size_bytes: file.byteLength,
      sha256: await sha256Hex(file),
      ...patch,
    },
  });
}

/** What the tenant's PUT to the presigned URL leaves in the bucket (the real PUT is exercised end to end). */
async function put(storageUrl: string, bytes: Uint8Array) {
  const key = decodeURIComponent(new URL(storageUrl).pathname).replace(/^.*\/imagegen\//, "");
  await env.BUCKET!.put(key, bytes);
}

const finalize = (key: string, id: string, version: number) =>
  call("POST", `/v1/addons/${id}/versions/${version}/finalize`, { token: key });

/** The committed random-family ControlNet's ONNX (vite inlines it: workerd has no filesystem). */
const CN_ONNX = Uint8Array.from(atob(cnOnnxUrl.slice(cnOnnxUrl.indexOf(",") + 1)), (c) => c.charCodeAt(0));
const text = (s: string) => new TextEncoder().encode(s);

/** The committed ControlNet bundle folder as a tar, after `edit` changes its manifest. */
function controlNetTar(edit: (m: any) => void = () => {}, onnx = { path: "controlnet/model.onnx", data: CN_ONNX }) {
  const manifest = structuredClone(cnManifest);
  edit(manifest);
  return writeTar([{ path: "manifest.json", data: text(JSON.stringify(manifest)) }, onnx]);
}

const startControlNet = (key: string, file: Uint8Array, name: string, family = "tiny-shapes-random") =>
  startUpload(key, file, { kind: "controlnet", name, family });

describe("add-on uploads", () => {
  it("create → presigned PUT of the declared size → finalize validates → ready and usable", async () => {
    const t = await newTenant("uploader");
    const file = kohyaLora();
    const up = await startUpload(t.key, file);
    expect(up.status, JSON.stringify(up.body)).toBe(201);
    expect(up.body.version).toMatchObject({ version: 1, status: "pending" });
    const url = new URL(up.body.upload.url);
    expect(url.searchParams.get("X-Amz-SignedHeaders")).toBe("content-length;content-type;host");
    expect(decodeURIComponent(url.pathname)).toContain(`/tenants/${t.id}/addons/${up.body.addon.id}/v1`);

    const early = await finalize(t.key, up.body.addon.id, 1);
    expect(early.status).toBe(409);
    expect(early.body.error.code).toBe("upload_missing");

    await put(up.body.upload.url, file);
    const done = await finalize(t.key, up.body.addon.id, 1);
    expect(done.status).toBe(200);
    expect(done.body.status).toBe("ready");
    expect(done.body.details).toMatchObject({
      convention: "kohya",
      layers: 1,
      rank: 4,
      modules: ["down_blocks.0.attentions.0.to_q"],
    });
    const job = await generate(t.key, { loras: [{ id: up.body.addon.id, scale: 0.7 }] });
    expect(job.status).toBe(202);
    expect(job.body.request.loras[0]).toMatchObject({
      id: up.body.addon.id,
      version: 1,
      sha256: await sha256Hex(file),
    });
  });

  it("rejects with a reason a person can act on", async () => {
    const t = await newTenant("rejects");
    const cases: Array<[string, Uint8Array, Uint8Array, RegExp]> = [
      ["truncated", kohyaLora(), kohyaLora().subarray(0, 100), /has 100 bytes but \d+ were declared/],
      [
        "other bytes",
        kohyaLora(),
        (() => {
          const f = kohyaLora();
          f[f.length - 1] = f[f.length - 1]! ^ 0xff;
          return f;
        })(),
        /sha256 is [0-9a-f]{64}, not the declared/,
      ],
      [
        "not safetensors",
        new TextEncoder().encode("this is not a LoRA file at all"),
        new TextEncoder().encode("this is not a LoRA file at all"),
        /Not a valid safetensors file/,
      ],
      [
        "unknown layer",
        kohyaLora(4, "lora_unet_up_blocks_9_nothing"),
        kohyaLora(4, "lora_unet_up_blocks_9_nothing"),
        /'lora_unet_up_blocks_9_nothing\.lora_down\.weight' matches no LoRA target/,
      ],
      ["rank too high", kohyaLora(16), kohyaLora(16), /rank 16, above this model's maximum of 8/],
      [
        "wrong shape",
        kohyaLora(4, "lora_unet_mid_block_proj", 16, 5),
        kohyaLora(4, "lora_unet_mid_block_proj", 16, 5),
        /has 5 output features; module 'mid_block.proj' has 4/,
      ],
      [
        "matrix for a convolution",
        kohyaLora(4, "lora_unet_mid_block_res1_conv1", 16, 16),
        kohyaLora(4, "lora_unet_mid_block_res1_conv1", 16, 16),
        /expected \[rank, 16, 3, 3\] \(module 'mid_block\.res1\.conv1' is a 3×3 convolution\)/,
      ],
    ];
    for (const [name, declared, uploaded, reason] of cases) {
      const up = await startUpload(t.key, declared, { name: `bad-${name.replace(/ /g, "-")}` });
      await put(up.body.upload.url, uploaded);
      const r = await finalize(t.key, up.body.addon.id, 1);
      expect(r.body.status, name).toBe("rejected");
      expect(r.body.rejection_reason, name).toMatch(reason);
      const use = await generate(t.key, { loras: [{ id: up.body.addon.id }] });
      expect(use.status, name).toBe(404);
    }
  });

  it("a LoCon file (3×3 convolution kernels) is checked against the model's convolution targets and becomes ready", async () => {
    const t = await newTenant("locon");
    const file = kohyaLora(4, "lora_unet_mid_block_res1_conv1", 16, 16, 3);
    const up = await startUpload(t.key, file, { name: "locon" });
    await put(up.body.upload.url, file);
    const done = await finalize(t.key, up.body.addon.id, 1);
    expect(done.body.status, JSON.stringify(done.body)).toBe("ready");
    expect(done.body.details).toMatchObject({
      convention: "kohya",
      layers: 1,
      rank: 4,
      modules: ["mid_block.res1.conv1"],
    });
    const job = await generate(t.key, { loras: [{ id: up.body.addon.id }] });
    expect(job.status).toBe(202);
  });

  it("a new version keeps the old one usable as id@version", async () => {
    const t = await newTenant("versions");
    const v1 = kohyaLora(2);
    const up1 = await startUpload(t.key, v1);
    await put(up1.body.upload.url, v1);
    await finalize(t.key, up1.body.addon.id, 1);
    const v2 = kohyaLora(4);
    const up2 = await startUpload(t.key, v2);
    expect(up2.body.addon.id).toBe(up1.body.addon.id);
    expect(up2.body.version.version).toBe(2);
    // Until v2 is ready, the bare id means v1.
    expect((await generate(t.key, { loras: [{ id: up1.body.addon.id }] })).body.request.loras[0].version).toBe(1);
    await put(up2.body.upload.url, v2);
    await finalize(t.key, up1.body.addon.id, 2);
    expect((await generate(t.key, { loras: [{ id: up1.body.addon.id }] })).body.request.loras[0].version).toBe(2);
    expect((await generate(t.key, { loras: [{ id: `${up1.body.addon.id}@1` }] })).body.request.loras[0].version).toBe(
      1,
    );
    const versions = await call("GET", `/v1/addons/${up1.body.addon.id}/versions`, { token: t.key });
    expect(versions.body.data.map((v: any) => [v.version, v.status])).toEqual([
      [2, "ready"],
      [1, "ready"],
    ]);
  });

  it("limits size and kind, and keeps other tenants out", async () => {
    const t = await newTenant("limits-up");
    const other = await newTenant("other-up");
    const big = await call("POST", "/v1/addons", {
      token: t.key,
      body: { kind: "lora", name: "huge", family: "tiny-shapes", size_bytes: 65 * 1024 * 1024, sha256: "a".repeat(64) },
    });
    expect(big.status).toBe(400);
    expect(big.body.error.code).toBe("addon_too_large");
    const file = kohyaLora();
    const up = await startUpload(t.key, file);
    await put(up.body.upload.url, file);
    expect((await finalize(other.key, up.body.addon.id, 1)).status).toBe(404);
    expect(
      (await call("PATCH", `/v1/addons/${up.body.addon.id}`, { token: other.key, body: { visibility: "public" } }))
        .status,
    ).toBe(404);
    expect((await finalize(t.key, up.body.addon.id, 1)).body.status).toBe("ready");
    expect((await generate(other.key, { loras: [{ id: up.body.addon.id }] })).status).toBe(404);
    const pub = await call("PATCH", `/v1/addons/${up.body.addon.id}`, { token: t.key, body: { visibility: "public" } });
    expect(pub.body.visibility).toBe("public");
    expect((await generate(other.key, { loras: [{ id: up.body.addon.id }] })).status).toBe(202);
  });

  it("the name of a deleted add-on is refused with a 409, not a 500 (found by schemathesis)", async () => {
    const t = await newTenant("deleted-name");
    const up = await startUpload(t.key, kohyaLora(), { name: "gone" });
    expect((await call("DELETE", `/v1/addons/${up.body.addon.id}`, { token: t.key })).status).toBe(200);
    const again = await startUpload(t.key, kohyaLora(), { name: "gone" });
    expect(again.status).toBe(409);
    expect(again.body.error.code).toBe("addon_name_taken");
  });

  it("a LoRA must fit every model of its family, not only the first", async () => {
    const t = await newTenant("lora-pair");
    await registerModel("pair-a", "pair");
    await registerModel("pair-b", "pair", { ...TINY_SPEC, lora_targets: TINY_SPEC.lora_targets.slice(1) });
    const file = kohyaLora();
    const up = await startUpload(t.key, file, { family: "pair" });
    await put(up.body.upload.url, file);
    const r = await finalize(t.key, up.body.addon.id, 1);
    expect(r.body.status).toBe("rejected");
    expect(r.body.rejection_reason).toMatch(
      /^Does not fit model 'pair-b': key 'lora_unet_down_blocks_0_attentions_0_to_q\.lora_down\.weight' matches no LoRA target/,
    );
  });
});

describe("add-on integrity", () => {
  it("a LoRA holding NaN or Inf is rejected at finalize, never ready", async () => {
    const t = await newTenant("nan-lora");
    for (const [name, bad] of [
      ["nan", Number.NaN],
      ["inf", Number.POSITIVE_INFINITY],
    ] as const) {
      const file = kohyaLora();
      const h = parseHeader(file, file.byteLength);
      const up = h.tensors.get("lora_unet_down_blocks_0_attentions_0_to_q.lora_up.weight")!;
      new DataView(file.buffer).setFloat32(h.dataOffset + up.begin + 4 * 5, bad, true);
      const started = await startUpload(t.key, file, { name });
      await put(started.body.upload.url, file);
      const r = await finalize(t.key, started.body.addon.id, 1);
      expect(r.body.status, name).toBe("rejected");
      expect(r.body.rejection_reason, name).toBe(
        "Tensor 'lora_unet_down_blocks_0_attentions_0_to_q.lora_up.weight' holds a non-finite value (NaN or ±Inf) at element 5; every image made with it would be broken.",
      );
      expect((await generate(t.key, { loras: [{ id: started.body.addon.id }] })).status, name).toBe(404);
    }
  });

  it("values are checked by bounded range reads that cut tensors only between elements, for every float dtype", async () => {
    // u8[3] | f16[3] (+Inf last) | bf16[2] | f64[2] | f32[2]: odd offsets, so 5-byte chunks straddle elements.
    const layout: Array<[string, string, number]> = [
      ["u", "U8", 3],
      ["h", "F16", 3],
      ["b", "BF16", 2],
      ["d", "F64", 2],
      ["f", "F32", 2],
    ];
    const size: Record<string, number> = { U8: 1, F16: 2, BF16: 2, F64: 8, F32: 4 };
    const entries: Record<string, unknown> = {};
    let offset = 0;
    for (const [name, dtype, n] of layout) {
      entries[name] = { dtype, shape: [n], data_offsets: [offset, offset + n * size[dtype]!] };
      offset += n * size[dtype]!;
    }
    const json = new TextEncoder().encode(JSON.stringify(entries));
    const file = new Uint8Array(8 + json.byteLength + offset).fill(0x3c, 8 + json.byteLength); // finite everywhere
    new DataView(file.buffer).setBigUint64(0, BigInt(json.byteLength), true);
    file.set(json, 8);
    const header = parseHeader(file, file.byteLength);
    const reads: Array<[number, number]> = [];
    const read = async (at: number, n: number) => (reads.push([at, n]), file.slice(at, at + n));
    const poke = (name: string, element: number, bytes: number[]) =>
      file.set(
        bytes,
        header.dataOffset + header.tensors.get(name)!.begin + element * size[(entries[name] as any).dtype]!,
      );
    expect(await findNonFinite(read, header, 5)).toBeUndefined();
    expect(reads.every(([, n]) => n <= 8)).toBe(true);
    poke("f", 1, [0, 0, 0xc0, 0x7f]); // f32 NaN
    expect(await findNonFinite(read, header, 5)).toEqual({ tensor: "f", element: 1 });
    poke("d", 1, [0, 0, 0, 0, 0, 0, 0xf0, 0x7f]); // f64 +Inf
    expect(await findNonFinite(read, header, 5)).toEqual({ tensor: "d", element: 1 });
    poke("b", 1, [0x80, 0xff]); // bf16 -Inf
    expect(await findNonFinite(read, header, 5)).toEqual({ tensor: "b", element: 1 });
    poke("h", 2, [0x00, 0x7c]); // f16 +Inf
    expect(await findNonFinite(read, header, 5)).toEqual({ tensor: "h", element: 2 });
    poke("u", 0, [0xff]); // an integer is never non-finite
    expect(await findNonFinite(read, header, 4096)).toEqual({ tensor: "h", element: 2 });
  });

  it("once ready, the file cannot be replaced through its upload URL (finalize seals it where no URL writes)", async () => {
    const t = await newTenant("sealed");
    const file = kohyaLora();
    const up = await startUpload(t.key, file);
    await put(up.body.upload.url, file);
    expect((await finalize(t.key, up.body.addon.id, 1)).body.status).toBe("ready");
    const versionKey = `tenants/${t.id}/addons/${up.body.addon.id}/v1`;
    // The URL still lives for an hour: whatever it writes now is not the file jobs read.
    await put(up.body.upload.url, kohyaLora(2));
    const kept = await env.BUCKET!.get(versionKey);
    expect(await sha256Hex(new Uint8Array(await kept!.arrayBuffer()))).toBe(await sha256Hex(file));
    expect(decodeURIComponent(new URL(up.body.upload.url).pathname)).not.toMatch(new RegExp(`/${versionKey}$`));
  });
});

describe("ControlNet uploads", () => {
  it("a tar of the bundle folder becomes ready with what was checked, and is usable", async () => {
    const t = await newTenant("cn-uploader");
    const file = controlNetTar();
    const up = await startControlNet(t.key, file, "mask");
    expect(up.status, JSON.stringify(up.body)).toBe(201);
    expect(up.body.upload.headers).toEqual({ "content-type": "application/octet-stream" });
    await put(up.body.upload.url, file);
    const done = await finalize(t.key, up.body.addon.id, 1);
    expect(done.body.rejection_reason).toBeNull();
    expect(done.body.status).toBe("ready");
    expect(done.body.details).toEqual({
      format: "tar",
      name: "tiny-shapes-random-controlnet-mask",
      conditioning: cnManifest.conditioning,
      residuals: 4,
      onnx_bytes: CN_ONNX.byteLength,
      checked_against: ["tiny-shapes-random"],
    });
    // A 1×1 RGB PNG: the edge reads the header of a control image at the door.
    const image =
      "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC";
    const job = await generate(t.key, { model: "tiny-shapes-random", controlnets: [{ id: up.body.addon.id, image }] });
    expect(job.status, JSON.stringify(job.body)).toBe(202);
    expect(job.body.request.controlnets[0]).toMatchObject({
      id: up.body.addon.id,
      version: 1,
      sha256: await sha256Hex(file),
    });
  });

  it("rejects with a reason a person can act on", async () => {
    const t = await newTenant("cn-rejects");
    const garbage = new Uint8Array(2048).map((_, i) => (i * 7) % 256);
    const cases: Array<[string, Uint8Array, RegExp, string?]> = [
      [
        "garbage",
        garbage,
        /^Not a valid tar archive: bad header checksum at offset 0\. Package the bundle folder with `tar --format=ustar/,
      ],
      ["too short", text("not a tar"), /^Not a valid tar archive: 9 bytes is too short for a tar archive/],
      [
        "no manifest",
        writeTar([{ path: "controlnet/model.onnx", data: CN_ONNX }]),
        /^The archive has no manifest\.json at its top level \(it holds: controlnet\/model\.onnx\)/,
      ],
      [
        "bad json",
        writeTar([{ path: "manifest.json", data: text("{ kind: controlnet") }]),
        /^manifest\.json is not valid JSON: /,
      ],
      [
        "not a controlnet manifest",
        controlNetTar((m) => {
          delete m.conditioning;
          m.kind = "diffusion";
        }),
        /^manifest\.json is not a ControlNet manifest: kind: .*; conditioning: /,
      ],
      [
        "other family",
        controlNetTar((m) => {
          m.family = "tiny-shapes";
        }),
        /^manifest\.json is for family 'tiny-shapes', but this add-on was created for 'tiny-shapes-random'/,
      ],
      [
        "onnx missing",
        controlNetTar((m) => {
          m.components.controlnet.path = "controlnet/cn.onnx";
        }),
        /^The archive has no controlnet\/cn\.onnx, the file components\.controlnet\.path names \(it holds: manifest\.json, controlnet\/model\.onnx\)/,
      ],
      [
        "outputs differ",
        controlNetTar((m) => {
          m.components.controlnet.outputs[3].name = "mid_residual";
          m.residuals = { ...m.residuals, mid_residual: m.residuals.mid_block_additional_residual };
          delete m.residuals.mid_block_additional_residual;
        }),
        /^controlnet\/model\.onnx does not match manifest\.json: declared outputs not in the graph: mid_residual; graph outputs not declared: mid_block_additional_residual; the graph's outputs are down_block_0_additional_residual, .*mid_block_additional_residual\.$/,
      ],
      [
        "unknown residual",
        controlNetTar((m) => {
          m.residuals.mid_block_additional_residual = "mid_block_9_residual";
        }),
        /^Does not fit model 'tiny-shapes-random': residual "mid_block_9_residual" \(from output "mid_block_additional_residual"\) is not a residual input of tiny-shapes-random\.$/,
      ],
      [
        "truncated onnx",
        controlNetTar(() => {}, { path: "controlnet/model.onnx", data: CN_ONNX.subarray(0, 5000) }),
        /^controlnet\/model\.onnx is not a readable ONNX model: /,
      ],
      [
        "no controlnet model",
        controlNetTar((m) => {
          m.family = "nobody";
        }),
        /^No model of family 'nobody' takes ControlNets\.$/,
        "nobody",
      ],
    ];
    for (const [name, file, reason, family] of cases) {
      const up = await startControlNet(t.key, file, `bad-${name.replace(/ /g, "-")}`, family);
      expect(up.status, name).toBe(201);
      await put(up.body.upload.url, file);
      const r = await finalize(t.key, up.body.addon.id, 1);
      expect(r.body.status, name).toBe("rejected");
      expect(r.body.rejection_reason, name).toMatch(reason);
    }
  });

  it("is limited to 512 MB", async () => {
    const t = await newTenant("cn-limits");
    const big = await call("POST", "/v1/addons", {
      token: t.key,
      body: {
        kind: "controlnet",
        name: "huge",
        family: "tiny-shapes-random",
        size_bytes: 513 * 1024 * 1024,
        sha256: "a".repeat(64),
      },
    });
    expect(big.status).toBe(400);
    expect(big.body.error.code).toBe("addon_too_large");
  });
});
