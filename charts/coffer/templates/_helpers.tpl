{{/* The release's base name: <release>, or <release>-coffer when the release name lacks "coffer". */}}
{{- define "coffer.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "coffer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "coffer.server.fullname" -}}{{ include "coffer.fullname" . }}-server{{- end -}}
{{- define "coffer.operator.fullname" -}}{{ include "coffer.fullname" . }}-operator{{- end -}}
{{/* Cluster-scoped objects carry the namespace too: two releases of one name never collide. */}}
{{- define "coffer.operator.clusterName" -}}{{ .Release.Namespace }}-{{ include "coffer.operator.fullname" . }}{{- end -}}

{{- define "coffer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "coffer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: coffer
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of a component: (dict "root" $ "component" "server") */}}
{{- define "coffer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "coffer.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "coffer.componentLabels" -}}
{{ include "coffer.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference: the digest when set, else the tag, else the chart's appVersion. */}}
{{- define "coffer.image" -}}
{{- $image := .image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* policy/v1 from Kubernetes 1.21, policy/v1beta1 before. */}}
{{- define "coffer.pdbApiVersion" -}}
{{- if semverCompare ">=1.21-0" .Capabilities.KubeVersion.Version -}}policy/v1{{- else -}}policy/v1beta1{{- end -}}
{{- end -}}

{{- define "coffer.keysSecretName" -}}
{{- default (printf "%s-keys" (include "coffer.server.fullname" .)) .Values.server.keys.existingSecret -}}
{{- end -}}

{{- define "coffer.tlsSecretName" -}}
{{- if eq .Values.server.tls.mode "secret" -}}
{{- required "server.tls.secretName is required with server.tls.mode=secret" .Values.server.tls.secretName -}}
{{- else -}}
{{- printf "%s-tls" (include "coffer.server.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "coffer.server.scheme" -}}
{{- if eq .Values.server.tls.mode "none" -}}http{{- else -}}https{{- end -}}
{{- end -}}

{{/* The URL the operator reaches coffer-server at. */}}
{{- define "coffer.operator.serverUrl" -}}
{{- if .Values.operator.serverUrl -}}
{{- .Values.operator.serverUrl -}}
{{- else if .Values.server.enabled -}}
{{- printf "%s://%s.%s.svc:%d" (include "coffer.server.scheme" .) (include "coffer.server.fullname" .) .Release.Namespace (int .Values.server.service.port) -}}
{{- else -}}
{{- fail "operator.serverUrl is required when server.enabled=false" -}}
{{- end -}}
{{- end -}}

{{- define "coffer.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "coffer.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required with operator.serviceAccount.create=false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "coffer.operator.tokenSecretName" -}}
{{- default (printf "%s-token" (include "coffer.operator.fullname" .)) .Values.operator.token.secretName -}}
{{- end -}}

{{/* Pod and container security contexts shared by both components. */}}
{{- define "coffer.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "coffer.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The spread of a component's pods over nodes and zones, unless set in values. */}}
{{- define "coffer.topologySpread" -}}
{{- $values := index .root.Values .component -}}
{{- if $values.topologySpreadConstraints -}}
{{ toYaml $values.topologySpreadConstraints }}
{{- else -}}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "coffer.selectorLabels" . | nindent 6 }}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "coffer.selectorLabels" . | nindent 6 }}
{{- end -}}
{{- end -}}
