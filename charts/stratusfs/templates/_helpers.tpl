{{/* Labels every object of the chart carries. */}}
{{- define "stratusfs.labels" -}}
app.kubernetes.io/name: stratusfs
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The operator's selector labels. */}}
{{- define "stratusfs.operatorSelector" -}}
app.kubernetes.io/name: stratusfs
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The image of every stratusfs program. */}}
{{- define "stratusfs.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The CSI controller's selector labels. */}}
{{- define "stratusfs.csiControllerSelector" -}}
app.kubernetes.io/name: stratusfs
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: csi-controller
{{- end }}

{{/* The CSI node plugin's selector labels. */}}
{{- define "stratusfs.csiNodeSelector" -}}
app.kubernetes.io/name: stratusfs
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: csi-node
{{- end }}
