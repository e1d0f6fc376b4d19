{{/* Names and labels, the usual helm create shapes. */}}
{{- define "depin.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "depin.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service: stable DNS names for node-to-node traffic. */}}
{{- define "depin.headless" -}}
{{- printf "%s-headless" (include "depin.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "depin.selectorLabels" -}}
app.kubernetes.io/name: {{ include "depin.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "depin.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "depin.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: depin-analytics
{{- end }}

{{- define "depin.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "depin.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* ETCD_ENDPOINTS: the subchart's client Service when it is enabled, else the external list. */}}
{{- define "depin.etcdEndpoints" -}}
{{- if .Values.etcd.enabled }}
{{- $svc := "" }}
{{- if .Values.etcd.fullnameOverride }}
{{- $svc = .Values.etcd.fullnameOverride }}
{{- else if contains "etcd" .Release.Name }}
{{- $svc = .Release.Name }}
{{- else }}
{{- $svc = printf "%s-etcd" .Release.Name }}
{{- end }}
{{- printf "http://%s.%s.svc:2379" ($svc | trunc 63 | trimSuffix "-") .Release.Namespace }}
{{- else }}
{{- join "," .Values.etcd.endpoints }}
{{- end }}
{{- end }}

{{- define "depin.etcdPrefix" -}}
{{- default (printf "/depin/%s/" .Release.Name) .Values.cluster.etcdPrefix }}
{{- end }}

{{/* preStop sleep + handoff + margin: the kubelet's SIGKILL must not cut a handoff short. */}}
{{- define "depin.terminationGracePeriodSeconds" -}}
{{- add .Values.cluster.preStopSleepSeconds .Values.cluster.handoffTimeoutSeconds .Values.cluster.terminationMarginSeconds }}
{{- end }}

{{/* Where the TLS and token Secrets are mounted (read-only). */}}
{{- define "depin.tlsDir" -}}/var/run/secrets/depin/tls{{- end }}
{{- define "depin.authDir" -}}/var/run/secrets/depin/auth{{- end }}
{{- define "depin.clusterTokenDir" -}}/var/run/secrets/depin/cluster-token{{- end }}

{{/* The name the probes check on the pod's certificate: tls.serverName, else the advertised host. */}}
{{- define "depin.tlsServerName" -}}
{{- default (printf "$(POD_NAME).%s.$(POD_NAMESPACE).svc" (include "depin.headless" .)) .Values.tls.serverName }}
{{- end }}

{{/*
The TLS probe: `query health` over TLS to 127.0.0.1 (the pod's own port), trusting ca.crt,
checking the name in TLS_SERVER_NAME (set on the container; kubelet does not expand
downward-API variables in probe commands), presenting the pod's certificate under mutual TLS.
*/}}
{{- define "depin.healthCommand" -}}
- /usr/local/bin/depin-analytics
- query
- --target
- "127.0.0.1:{{ .Values.ports.grpc }}"
- --tls-ca
- {{ include "depin.tlsDir" . }}/ca.crt
{{- if .Values.tls.mutual }}
- --tls-client-cert
- {{ include "depin.tlsDir" . }}/tls.crt
- --tls-client-key
- {{ include "depin.tlsDir" . }}/tls.key
{{- end }}
- health
{{- end }}

{{/*
Refusals. Without etcd, several replicas would be independent standalone nodes behind one
Service. The shard count is fixed at creation: on upgrade, compare with the live StatefulSet
(lookup sees nothing in `helm template`, so offline renders are not checked).
*/}}
{{- define "depin.validate" -}}
{{- if and (not .Values.etcd.enabled) (empty .Values.etcd.endpoints) (gt (int .Values.replicaCount) 1) }}
{{- fail "etcd: set etcd.endpoints to an existing etcd or etcd.enabled=true; without etcd only replicaCount=1 (standalone) works" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt" }}
{{- end }}
{{- if and .Values.tls.mutual (not .Values.tls.enabled) }}
{{- fail "tls.mutual needs tls.enabled=true" }}
{{- end }}
{{- $live := lookup "apps/v1" "StatefulSet" .Release.Namespace (include "depin.fullname" .) }}
{{- if $live }}
{{- range $c := $live.spec.template.spec.containers }}
{{- range $e := (default list $c.env) }}
{{- if and (eq $e.name "SHARD_COUNT") (ne (toString $e.value) (toString $.Values.shardCount)) }}
{{- fail (printf "shardCount is fixed when the cluster is created: this release runs %s shards, refusing to change it to %v (install a new cluster under a new etcd prefix instead)" $e.value $.Values.shardCount) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
