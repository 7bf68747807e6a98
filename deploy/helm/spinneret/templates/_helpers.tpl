{{- define "spinneret.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "spinneret.labels" -}}
app.kubernetes.io/part-of: spinneret
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- /* the spinneret entry of the conflist */ -}}
{{- define "spinneret.plugin" -}}
{{- $p := dict "type" "spinneret" "capabilities" (dict "io.kubernetes.cri.pod-annotations" true "portMappings" true "bandwidth" true) "networks" .Values.cni.networks -}}
{{- if .Values.cni.coordinator }}{{ $_ := set $p "coordinator" .Values.cni.coordinator }}{{ end -}}
{{- if ne .Values.paths.etc "/etc/spinneret" }}{{ $_ := set $p "nodeConf" (printf "%s/node.yaml" .Values.paths.etc) }}{{ end -}}
{{- $p = merge $p .Values.cni.extra -}}
{{- dict "cniVersion" .Values.cni.cniVersion "cniVersions" .Values.cni.cniVersions "name" "spinneret" "plugins" (list $p) | toPrettyJson -}}
{{- end -}}
