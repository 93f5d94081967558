{{/*
The app's name: the chart's, or nameOverride. It is the pods' selector label, the one the
PodMonitor selects them by.
*/}}
{{- define "mqtrace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The objects' name: the release's if it already contains the app's name (release "mqtrace"
gives "mqtrace", the names of deploy/kubernetes), else "<release>-<name>"; or fullnameOverride.
*/}}
{{- define "mqtrace.fullname" -}}
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

{{/*
Helm's own labels, on every object's metadata (not on the pods, not in selectors).
*/}}
{{- define "mqtrace.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The selector: the pods' label, which the DaemonSet and the PodMonitor select by.
*/}}
{{- define "mqtrace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mqtrace.name" . }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "mqtrace.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mqtrace.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image: repository and tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "mqtrace.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
