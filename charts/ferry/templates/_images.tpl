{{/*
The two images: the services' (./Dockerfile: the services, pvcinit and populator
pods) and the conversion image (./Dockerfile.conversion: virt-v2v and libguestfs,
for conversion and virt-inspector pods). A tag left empty is the chart's appVersion.
*/}}
{{- define "ferry.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ferry.conversionImage" -}}
{{ .Values.conversionImage.repository }}:{{ .Values.conversionImage.tag | default .Chart.AppVersion }}
{{- end -}}
