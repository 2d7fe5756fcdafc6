{{/*
Names, labels and the shared pieces of the pod specs.
*/}}

{{/* Chart name, overridable. */}}
{{- define "hermes.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Fully qualified name: <release>-<chart>, or the release alone when it already holds the
chart name. Truncated to leave room for the longest suffix ("-consumer").
*/}}
{{- define "hermes.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "hermes.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of the release (no component): every Hermes pod of this release. */}}
{{- define "hermes.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "hermes.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Selector labels of one component: include "hermes.selectorLabels" (dict "ctx" $ "component" "gateway") */}}
{{- define "hermes.selectorLabels" -}}
{{ include "hermes.releaseSelectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of every resource: include "hermes.labels" (dict "ctx" $ "component" "gateway"); component may be empty. */}}
{{- define "hermes.labels" -}}
helm.sh/chart: {{ include "hermes.chart" .ctx }}
{{ include "hermes.releaseSelectorLabels" .ctx }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: hermes
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* metadata.annotations (indented for metadata), nothing when there are none. Call without nindent: include "hermes.annotations" (dict "ctx" $ "extra" $more) */}}
{{- define "hermes.annotations" -}}
{{- $all := merge (dict) (.extra | default dict) (.ctx.Values.commonAnnotations | default dict) -}}
{{- with $all }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{/* Resource names. */}}
{{- define "hermes.gatewayName" -}}{{ include "hermes.fullname" . }}-gateway{{- end -}}
{{- define "hermes.consumerName" -}}{{ include "hermes.fullname" . }}-consumer{{- end -}}
{{- define "hermes.internalServiceName" -}}{{ include "hermes.fullname" . }}-internal{{- end -}}
{{- define "hermes.leaseName" -}}{{ .Values.consumer.kube.leaseName | default (printf "%s-reaper" (include "hermes.fullname" .)) }}{{- end -}}

{{- define "hermes.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "hermes.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "hermes.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "hermes.fullname" .) -}}
{{- end -}}

{{- define "hermes.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* True ("true") when a consumer container runs inside each gateway pod. */}}
{{- define "hermes.consumerSidecar" -}}
{{- if and .Values.consumer.enabled (eq .Values.consumer.mode "sidecar") -}}true{{- end -}}
{{- end -}}

{{/* True ("true") when the consumer has its own Deployment. */}}
{{- define "hermes.consumerDeployment" -}}
{{- if and .Values.consumer.enabled (eq .Values.consumer.mode "deployment") -}}true{{- end -}}
{{- end -}}

{{/* Selector labels of the pods that run a consumer (its Deployment, or the gateways with a sidecar). */}}
{{- define "hermes.consumerPodSelectorLabels" -}}
{{- if include "hermes.consumerSidecar" . -}}
{{ include "hermes.selectorLabels" (dict "ctx" . "component" "gateway") }}
{{- else -}}
{{ include "hermes.selectorLabels" (dict "ctx" . "component" "consumer") }}
{{- end -}}
{{- end -}}

{{/*
Checks of values that would only fail at run time otherwise. Included by every
workload template so `helm template` and `helm lint` report them.
*/}}
{{- define "hermes.validate" -}}
{{- $v := .Values -}}
{{- if not (has $v.consumer.mode (list "sidecar" "deployment")) -}}
{{- fail (printf "consumer.mode: %q must be sidecar or deployment" $v.consumer.mode) -}}
{{- end -}}
{{- if not (has $v.consumer.source (list "amqp" "sqs")) -}}
{{- fail (printf "consumer.source: %q must be amqp or sqs" $v.consumer.source) -}}
{{- end -}}
{{- if not (has $v.registry.type (list "scylla" "memory")) -}}
{{- fail (printf "registry.type: %q must be scylla or memory" $v.registry.type) -}}
{{- end -}}
{{- if eq $v.registry.type "memory" -}}
{{- if or $v.autoscaling.enabled (gt (int $v.gateway.replicaCount) 1) -}}
{{- fail "registry.type: memory keeps the registry inside one gateway: use gateway.replicaCount: 1 without autoscaling, or registry.type: scylla" -}}
{{- end -}}
{{- end -}}
{{- if not (has $v.scylla.schema (list "job" "external" "pods")) -}}
{{- fail (printf "scylla.schema: %q must be job, external or pods" $v.scylla.schema) -}}
{{- end -}}
{{- if and (eq $v.registry.type "scylla") (not $v.scylla.nodes) -}}
{{- fail "scylla.nodes: give at least one host:port" -}}
{{- end -}}
{{- if and $v.consumer.enabled (eq $v.consumer.source "sqs") -}}
{{- if not $v.sqs.queueUrl -}}{{- fail "sqs.queueUrl: required when consumer.source is sqs" -}}{{- end -}}
{{- if not $v.sqs.region -}}{{- fail "sqs.region: required when consumer.source is sqs" -}}{{- end -}}
{{- end -}}
{{- if and $v.consumer.enabled (eq $v.consumer.source "amqp") (not $v.amqp.url) (not $v.secrets.existingSecret) -}}
{{- fail "amqp.url: required when consumer.source is amqp (or put HERMES_AMQP_URL in secrets.existingSecret): amqp://USER:PASSWORD@HOST:5672/%2f with a user made for Hermes (rabbitmqctl add_user hermes PASSWORD; rabbitmqctl set_permissions -p / hermes '.*' '.*' '.*'); RabbitMQ's guest user may only log in from localhost" -}}
{{- end -}}
{{- if ge (int $v.gateway.drainSeconds) (int $v.gateway.shutdownGraceSeconds) -}}
{{- fail "gateway.shutdownGraceSeconds must be greater than gateway.drainSeconds: the drain happens inside the grace period" -}}
{{- end -}}
{{- if and (eq $v.registry.type "scylla") (ge (int $v.gateway.drainSeconds) (int $v.registry.ttlSeconds)) -}}
{{- fail "registry.ttlSeconds must be greater than gateway.drainSeconds: the gateway refuses a drain as long as a shared registry's TTL (HERMES_DRAIN_SECONDS, HERMES_REGISTRY_TTL_SECONDS)" -}}
{{- end -}}
{{- if and (not $v.scylla.username) $v.scylla.password -}}
{{- fail "scylla.username and scylla.password: set both or neither" -}}
{{- end -}}
{{- if and $v.scylla.username (not $v.scylla.password) -}}
{{- fail "scylla.username and scylla.password: set both or neither" -}}
{{- end -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds of the gateway pods: the preStop sleep, then SIGTERM, after
which the gateway drains for HERMES_DRAIN_SECONDS and exits at the latest
HERMES_SHUTDOWN_GRACE_SECONDS after the signal; plus a margin before SIGKILL.
*/}}
{{- define "hermes.gatewayTerminationGrace" -}}
{{- add (int .Values.gateway.preStopSleepSeconds) (int .Values.gateway.shutdownGraceSeconds) (int .Values.gateway.terminationGraceMarginSeconds) -}}
{{- end -}}

{{/* Registry settings shared by both ConfigMaps. "component" tells who reads them. */}}
{{- define "hermes.registryConfig" -}}
{{- $v := .ctx.Values -}}
HERMES_STAGE: {{ $v.stage | quote }}
HERMES_LOG: {{ $v.config.logLevel | quote }}
HERMES_LOG_FORMAT: {{ $v.config.logFormat | quote }}
HERMES_DELIVER_TIMEOUT_MS: {{ $v.config.deliverTimeoutMs | quote }}
HERMES_REGISTRY_TTL_SECONDS: {{ $v.registry.ttlSeconds | quote }}
HERMES_REGISTRY_ROW_TTL_SECONDS: {{ $v.registry.rowTtlSeconds | quote }}
{{- if eq $v.registry.type "scylla" }}
HERMES_REGISTRY: "scylla"
HERMES_SCYLLA_NODES: {{ join "," $v.scylla.nodes | quote }}
{{- with $v.scylla.keyspace }}
HERMES_SCYLLA_KEYSPACE: {{ . | quote }}
{{- end }}
HERMES_SCYLLA_REPLICATION: {{ $v.scylla.replication | quote }}
HERMES_SCYLLA_CONSISTENCY: {{ $v.scylla.consistency | quote }}
{{- with $v.scylla.localDc }}
HERMES_SCYLLA_LOCAL_DC: {{ . | quote }}
{{- end }}
HERMES_SCYLLA_TIMEOUT_MS: {{ $v.scylla.timeoutMs | quote }}
HERMES_SCYLLA_SCHEMA: {{ ternary "create" "verify" (eq $v.scylla.schema "pods") | quote }}
{{- else if eq .component "gateway" }}
HERMES_REGISTRY: "memory"
{{- else if include "hermes.consumerSidecar" .ctx }}
HERMES_REGISTRY: "remote"
HERMES_REGISTRY_URL: "http://127.0.0.1:8081"
{{- else }}
HERMES_REGISTRY: "remote"
HERMES_REGISTRY_URL: {{ printf "http://%s:8081" (include "hermes.internalServiceName" .ctx) | quote }}
{{- end }}
{{- range $k, $val := $v.config.extra }}
{{ $k }}: {{ $val | toString | quote }}
{{- end }}
{{- end -}}

{{/* Secret-backed environment entries: include "hermes.secretEnv" (dict "ctx" $ "keys" (list ...) "optional" (list ...)) */}}
{{- define "hermes.secretEnv" -}}
{{- $secret := include "hermes.secretName" .ctx -}}
{{- range .keys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
{{- end }}
{{- range .optional }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
      optional: true
{{- end }}
{{- end -}}

{{/* The consumer container, the same in its Deployment and as a sidecar. */}}
{{- define "hermes.consumerContainer" -}}
{{- $v := .Values -}}
- name: consumer
  image: {{ include "hermes.image" . | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  command: ["hermes-consumer"]
  ports:
    - name: consumer
      containerPort: 8082
      protocol: TCP
  envFrom:
    - configMapRef:
        name: {{ include "hermes.consumerName" . }}
  env:
    {{- include "hermes.secretEnv" (dict "ctx" . "keys" (list "HERMES_INTERNAL_SECRET") "optional" (list "HERMES_SCYLLA_USERNAME" "HERMES_SCYLLA_PASSWORD")) | trim | nindent 4 }}
    {{- if eq $v.consumer.source "amqp" }}
    {{- include "hermes.secretEnv" (dict "ctx" . "keys" (list "HERMES_AMQP_URL")) | trim | nindent 4 }}
    {{- else }}
    {{- include "hermes.secretEnv" (dict "ctx" . "optional" (list "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "AWS_SESSION_TOKEN")) | trim | nindent 4 }}
    {{- end }}
    {{- if $v.consumer.kube.enabled }}
    # Kubernetes discovery and the reaper's Lease (see docs/kubernetes.md).
    - name: HERMES_KUBE_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: HERMES_KUBE_IDENTITY
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    {{- end }}
    {{- with $v.consumer.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.consumer.startupProbe }}
  startupProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.consumer.livenessProbe }}
  livenessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.consumer.readinessProbe }}
  readinessProbe:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.consumer.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.consumer.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/* Default soft anti-affinity: spread a component's pods across nodes. */}}
{{- define "hermes.defaultAffinity" -}}
podAntiAffinity:
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "hermes.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 12 }}
{{- end -}}

{{/* The default topology spread of a component's pods: across zones, soft (a cluster with
one zone, or nodes without the label, still schedules), counted per ReplicaSet
(pod-template-hash) so that a rolling update does not skew it.
include "hermes.zoneSpread" (dict "ctx" $ "component" "gateway") */}}
{{- define "hermes.zoneSpread" -}}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  matchLabelKeys: ["pod-template-hash"]
  labelSelector:
    matchLabels:
      {{- include "hermes.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
{{- end -}}

{{/* The peers allowed on the internal ports: this release's pods, the namespaces named in
networkPolicy.internalFromNamespaces, networkPolicy.internalFrom. */}}
{{- define "hermes.internalPeers" -}}
- podSelector:
    matchLabels:
      {{- include "hermes.releaseSelectorLabels" . | nindent 6 }}
{{- range .Values.networkPolicy.internalFromNamespaces }}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ . | quote }}
{{- end }}
{{- with .Values.networkPolicy.internalFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The gateway pods' label selector as a string: k=v,k=v (sorted by key). */}}
{{- define "hermes.gatewaySelectorString" -}}
{{- $pairs := list -}}
{{- range $k, $val := (include "hermes.selectorLabels" (dict "ctx" . "component" "gateway") | fromYaml) -}}
{{- $pairs = append $pairs (printf "%s=%s" $k $val) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/*
Checksum of what goes into the Secret, from the values (not from the rendered Secret,
whose generated entries are random at each render until they are stored): changing a
secret value rolls the pods, an upgrade that changes nothing does not.
*/}}
{{- define "hermes.secretChecksum" -}}
{{- $v := .Values -}}
{{- $in := dict "secrets" $v.secrets "amqp" $v.amqp.url "scylla" (list $v.scylla.username $v.scylla.password) "sqs" (list $v.sqs.accessKeyId $v.sqs.secretAccessKey $v.sqs.sessionToken) -}}
{{- toJson $in | sha256sum -}}
{{- end -}}
