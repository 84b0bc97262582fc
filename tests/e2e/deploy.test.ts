/**
 * The Kubernetes descriptors of infra/deploy/, checked without a cluster: each object against the JSON Schema of
 * its kind (Kubernetes' own OpenAPI schemas and KEDA's CRD schemas, as compiled by the kubernetes-models packages),
 * then what no schema knows: the references between the objects and to the edge's metrics.
 */
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";
import { Deployment, StatefulSet } from "kubernetes-models/apps/v1";
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2";
import { ConfigMap, Secret } from "kubernetes-models/v1";
import { describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";

const root = resolve(import.meta.dirname, "../..");
const deployDir = join(root, "infra/deploy");

interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec?: any;
  data?: Record<string, string>;
}

/** The model class of every kind infra/deploy may hold; an object of another kind is an error, not a pass. */
const KINDS: Record<string, new (data: any) => { validate(): void }> = {
  "apps/v1/Deployment": Deployment,
  "apps/v1/StatefulSet": StatefulSet,
  "v1/ConfigMap": ConfigMap,
  "v1/Secret": Secret,
  "autoscaling/v2/HorizontalPodAutoscaler": HorizontalPodAutoscaler,
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "keda.sh/v1alpha1/TriggerAuthentication": TriggerAuthentication,
};

/** Validates one object against its kind's schema; throws with the schema's complaint. */
function validateObject(obj: K8sObject): void {
  const Model = KINDS[`${obj.apiVersion}/${obj.kind}`];
  if (!Model) throw new Error(`No schema for ${obj.apiVersion} ${obj.kind}.`);
  new Model(obj).validate();
}

function loadObjects(): Array<{ file: string; obj: K8sObject }> {
  const files = readdirSync(deployDir).filter((f) => f.endsWith(".k8s.yaml"));
  return files.flatMap((file) =>
    parseAllDocuments(readFileSync(join(deployDir, file), "utf8")).map((doc) => {
      if (doc.errors.length) throw new Error(`${file}: ${doc.errors[0]!.message}`);
      return { file, obj: doc.toJS() as K8sObject };
    }),
  );
}

const objects = loadObjects();
const byKind = (kind: string) => objects.map((o) => o.obj).filter((o) => o.kind === kind);
/** The metric names the edge writes (edge/src/metrics/queue.ts), read from its source: no D1 runs here. */
const edgeMetrics = [
  ...readFileSync(join(root, "edge/src/metrics/queue.ts"), "utf8").matchAll(/name: "(imagegen_[a-z_]+)"/g),
].map((m) => m[1]!);

/** What KEDA's prometheus scaler reads from a trigger's metadata (the CRD types it only as a string map). */
const PROMETHEUS_TRIGGER_KEYS = new Set([
  "serverAddress",
  "query",
  "threshold",
  "activationThreshold",
  "namespace",
  "customHeaders",
  "ignoreNullValues",
  "unsafeSsl",
  "queryParameters",
  "authModes",
]);

function checkScaledObject(so: K8sObject, workloads: K8sObject[]): void {
  const target = so.spec.scaleTargetRef;
  const kind = target.kind ?? "Deployment";
  if (!workloads.some((w) => w.kind === kind && w.metadata.name === target.name)) {
    throw new Error(`ScaledObject ${so.metadata.name} targets ${kind} '${target.name}', which infra/deploy lacks.`);
  }
  if (so.spec.minReplicaCount > so.spec.maxReplicaCount) throw new Error("minReplicaCount > maxReplicaCount");
  for (const t of so.spec.triggers) {
    if (t.type !== "prometheus") throw new Error(`Unexpected trigger type '${t.type}'.`);
    for (const key of Object.keys(t.metadata)) {
      if (!PROMETHEUS_TRIGGER_KEYS.has(key)) throw new Error(`Unknown prometheus trigger key '${key}'.`);
    }
    for (const key of ["serverAddress", "query", "threshold"]) {
      if (!t.metadata[key]) throw new Error(`Trigger '${t.name}' lacks ${key}.`);
    }
    new URL(t.metadata.serverAddress);
    for (const key of ["threshold", "activationThreshold"]) {
      if (key in t.metadata && !Number.isFinite(Number(t.metadata[key]))) {
        throw new Error(`Trigger '${t.name}': ${key} '${t.metadata[key]}' is not a number.`);
      }
    }
    if (!["AverageValue", "Value", undefined].includes(t.metricType)) throw new Error(`metricType ${t.metricType}`);
    const names = [...String(t.metadata.query).matchAll(/\b(imagegen_[a-z_]+)\b/g)].map((m) => m[1]!);
    if (names.length === 0) throw new Error(`Trigger '${t.name}' reads no imagegen_ metric.`);
    for (const n of names) if (!edgeMetrics.includes(n)) throw new Error(`The edge exposes no metric '${n}'.`);
  }
}

describe("infra/deploy descriptors", () => {
  it("are all of a known kind and valid against its schema", () => {
    expect(objects.map((o) => o.obj.kind).sort()).toEqual(["ConfigMap", "ScaledObject", "StatefulSet"]);
    for (const { file, obj } of objects) expect(() => validateObject(obj), `${file} ${obj.kind}`).not.toThrow();
  });

  it("scale the runner pool on the edge's queue metrics", () => {
    expect(edgeMetrics).toEqual(expect.arrayContaining(["imagegen_queue_depth", "imagegen_jobs_leased"]));
    const [so] = byKind("ScaledObject");
    expect(() => checkScaledObject(so!, byKind("StatefulSet"))).not.toThrow();
    // KEDA's HPA owns the replica count: a workload that sets one would fight it on every apply.
    expect(byKind("StatefulSet")[0]!.spec.replicas).toBeUndefined();
  });

  it("give each runner pod a token of its own (the edge counts leases per token)", () => {
    const pod = byKind("StatefulSet")[0]!.spec.template.spec;
    const runner = pod.containers[0];
    const index = runner.env.find((e: { name: string }) => e.name === "POD_INDEX");
    expect(index.valueFrom.fieldRef.fieldPath).toBe("metadata.labels['apps.kubernetes.io/pod-index']");
    const mount = runner.volumeMounts.find((m: { name: string }) => m.name === "tokens");
    expect(runner.command.join(" ")).toContain(`${mount.mountPath}/token-$POD_INDEX`);
    expect(runner.env.some((e: { name: string }) => e.name === "RUNNER_TOKEN")).toBe(false);
    expect(pod.volumes.find((v: { name: string }) => v.name === "tokens").secret.secretName).toBeTruthy();
    // The entrypoint it runs is the runner daemon the image ships.
    expect(runner.command.join(" ")).toContain("gpu-runner/src/runner/serve.ts");
    expect(readFileSync(join(root, "infra/runner/Dockerfile"), "utf8")).toContain("gpu-runner/src/runner/serve.ts");
  });

  it("scrape the edge's metrics endpoint with the operator's bearer token", () => {
    const [cm] = byKind("ConfigMap");
    const config = parse(cm!.data!["scrape.yml"]!) as { scrape_configs: any[] };
    const job = config.scrape_configs.find((j) => j.job_name === "imagegen-edge");
    expect(job.metrics_path).toBe("/admin/v1/metrics");
    expect(job.authorization.type).toBe("Bearer");
    expect(job.authorization.credentials_file).toMatch(/^\/.+/);
    // The triggers select the series this job's label gives them.
    for (const t of byKind("ScaledObject")[0]!.spec.triggers) expect(t.metadata.query).toContain('job="imagegen-edge"');
  });

  it("fail on broken descriptors (the checks can fail)", () => {
    const clone = <T>(o: T): T => structuredClone(o);
    const deployment = byKind("StatefulSet")[0]!;
    const so = byKind("ScaledObject")[0]!;

    const noSelector = clone(deployment);
    delete noSelector.spec.selector;
    expect(() => validateObject(noSelector)).toThrow(/selector/);

    const asDeployment = { ...clone(deployment), kind: "Deployment" };
    expect(() => checkScaledObject(so, [asDeployment])).toThrow(/lacks/);

    const badPort = clone(deployment);
    badPort.spec.template.spec.containers[0].ports = [{ containerPort: "http" }];
    expect(() => validateObject(badPort)).toThrow(/containerPort/);

    const stringReplicas = clone(so);
    stringReplicas.spec.maxReplicaCount = "sixteen";
    expect(() => validateObject(stringReplicas)).toThrow(/maxReplicaCount/);

    const untypedTrigger = clone(so);
    delete untypedTrigger.spec.triggers[0].type;
    expect(() => validateObject(untypedTrigger)).toThrow(/type/);

    const noTargets = clone(so);
    delete noTargets.spec.scaleTargetRef;
    expect(() => validateObject(noTargets)).toThrow(/scaleTargetRef/);

    expect(() => validateObject({ ...so, apiVersion: "keda.sh/v1" })).toThrow(/No schema/);

    const wrongTarget = clone(so);
    wrongTarget.spec.scaleTargetRef.name = "imagegen-runners";
    expect(() => checkScaledObject(wrongTarget, [deployment])).toThrow(/lacks/);

    const typo = clone(so);
    typo.spec.triggers[0].metadata.treshold = "4";
    expect(() => checkScaledObject(typo, [deployment])).toThrow(/Unknown prometheus trigger key 'treshold'/);

    const unknownMetric = clone(so);
    unknownMetric.spec.triggers[0].metadata.query = "sum(imagegen_queue_length)";
    expect(() => checkScaledObject(unknownMetric, [deployment])).toThrow(/no metric 'imagegen_queue_length'/);

    const nanThreshold = clone(so);
    nanThreshold.spec.triggers[1].metadata.threshold = "ten";
    expect(() => checkScaledObject(nanThreshold, [deployment])).toThrow(/not a number/);
  });
});
