{{/* The chart's name, and the release's objects' name: the release name when it already holds the chart's. */}}
{{- define "ecc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ecc.fullname" -}}
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

{{- define "ecc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ecc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "ecc.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ecc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ext-proc-credentials
{{- end }}

{{- define "ecc.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "ecc.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "ecc.fullname" .) }}
{{- end }}

{{- define "ecc.serverCredential" -}}
{{- if .Values.secrets.existingSecret }}{{ .Values.secrets.existingSecretHasServerCredential }}{{ else }}{{ ne .Values.secrets.serverCredential "" }}{{ end }}
{{- end }}

{{/* The server's config.toml: the operator's settings, then the files the chart mounts. */}}
{{- define "ecc.configToml" -}}
# The ext-proc server's settings (docs/configuration.md), from the chart's `config` value.
{{- range $key, $value := .Values.config }}
{{ $key }} = {{ $value | toJson }}
{{- end }}
metrics_listen = {{ printf "0.0.0.0:%v" .Values.gateway.ports.metrics | quote }}
# The secret LiteLLM sends as its Anthropic key: only requests carrying it get a sealed or the server credential.
egress_token_file = "/etc/ext-proc/secrets/egress-token"
{{- if eq (include "ecc.serverCredential" .) "true" }}
server_credential_file = "/etc/ext-proc/secrets/server-credential"
{{- end }}
{{- end }}
