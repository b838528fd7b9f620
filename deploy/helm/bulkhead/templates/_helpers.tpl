{{/* Labels selecting a workload's pods. Args: list component name. */}}
{{- define "bulkhead.selector" -}}
app.kubernetes.io/component: {{ index . 0 }}
app.kubernetes.io/name: {{ index . 1 }}
app.kubernetes.io/part-of: bulkhead
{{- end }}

{{/* Labels Helm adds to each object's metadata (not to selectors or pods). */}}
{{- define "bulkhead.chartLabels" -}}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Object metadata. Args: dict ctx component name. */}}
{{- define "bulkhead.meta" -}}
name: {{ .name }}
namespace: {{ .ctx.Release.Namespace }}
labels:
  {{- include "bulkhead.selector" (list .component .name) | nindent 2 }}
  {{- include "bulkhead.chartLabels" .ctx | nindent 2 }}
{{- end }}

{{- define "bulkhead.image" -}}
{{ .ctx.Values.images.prefix }}/bulkhead-{{ .component }}:{{ .ctx.Values.images.tag | default .ctx.Chart.AppVersion }}
{{- end }}

{{- define "bulkhead.containerSecurity" -}}
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "bulkhead.podSecurity" -}}
automountServiceAccountToken: false
securityContext:
  fsGroup: 65532
  runAsNonRoot: true
{{- end }}

{{/* A TCP probe on a named port. */}}
{{- define "bulkhead.probe" -}}
periodSeconds: 10
tcpSocket:
  port: {{ . }}
{{- end }}

{{/* A Secret volume (mode 0440). Args: list volumeName secretName. */}}
{{- define "bulkhead.secretVolume" -}}
- name: {{ index . 0 }}
  secret:
    defaultMode: 288
    secretName: {{ index . 1 }}
{{- end }}

{{/* Pods of another namespace (all, or those with podLabels). */}}
{{- define "bulkhead.remote" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .namespace }}
  podSelector:
    matchLabels: {{- toYaml (.podLabels | default dict) | nindent 6 }}
{{- end }}

{{/* Pods of this namespace with a component. */}}
{{- define "bulkhead.local" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/component: {{ . }}
      app.kubernetes.io/part-of: bulkhead
{{- end }}

{{- define "bulkhead.ports" -}}
{{- range . }}
- port: {{ . }}
  protocol: TCP
{{- end }}
{{- end }}

{{- define "bulkhead.dnsEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
  to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
      podSelector:
        matchLabels:
          k8s-app: kube-dns
{{- end }}

{{- define "bulkhead.natsEgress" -}}
- ports:
    - port: {{ .Values.nats.port }}
      protocol: TCP
  to:
    {{- include "bulkhead.remote" .Values.nats | nindent 4 }}
{{- end }}

{{/* Prometheus may scrape a metrics port (when monitoring is set). */}}
{{- define "bulkhead.scrape" -}}
{{- if .ctx.Values.monitoring }}
- from:
    {{- include "bulkhead.remote" .ctx.Values.monitoring | nindent 4 }}
  ports:
    {{- include "bulkhead.ports" (list .port) | nindent 4 }}
{{- end }}
{{- end }}

{{- define "bulkhead.workerName" -}}
bulkhead-worker-{{ . }}
{{- end }}

{{/* The pool's checks (the renderer's ConfigErrors, the ones a chart can make). */}}
{{- define "bulkhead.checkPool" -}}
{{- $p := . }}
{{- if not (has $p.isolation (list "shared" "process" "mig" "dedicated")) }}
{{- fail (printf "pool %q: unknown isolation tier %q (expected shared, process, mig or dedicated)" $p.name $p.isolation) }}
{{- end }}
{{- if and (ne $p.isolation "shared") (ne (len ($p.tenants | default list)) 1) }}
{{- fail (printf "pool %q: isolation %s is tenant-dedicated and admits exactly one tenant, not %d" $p.name $p.isolation (len ($p.tenants | default list))) }}
{{- end }}
{{- if and (eq $p.isolation "mig") (not $p.migProfile) }}
{{- fail (printf "pool %q: isolation mig needs migProfile (e.g. \"1g.10gb\")" $p.name) }}
{{- end }}
{{- if and (ne $p.isolation "mig") $p.migProfile }}
{{- fail (printf "pool %q: migProfile is only allowed with isolation mig" $p.name) }}
{{- end }}
{{- if and (eq $p.isolation "mig") $p.gpus }}
{{- fail (printf "pool %q: a mig pool gets one MIG slice; remove gpus" $p.name) }}
{{- end }}
{{- end }}
