{{/*
The pod spec every chat-management workload shares: the services' Deployments, the cleanup CronJob and
the smoke test. Arguments (a dict):
  root            the chart's root context ($)
  component       a service | cleanup | setup | smoke-test
  settings        podDefaults merged with the workload's own values (see chat-management.podSettings)
  args            the container's arguments (the image's entrypoint is `chat-management`)
  serve           true for the HTTP services: port, probes and the preStop drain
  restartPolicy   set for Jobs
*/}}
{{- define "chat-management.podSpec" -}}
{{- $root := .root -}}
{{- $s := .settings -}}
{{- $nameArgs := dict "root" $root "component" .component -}}
serviceAccountName: {{ include "chat-management.serviceAccountName" $nameArgs }}
automountServiceAccountToken: false
enableServiceLinks: false
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .restartPolicy }}
restartPolicy: {{ . }}
{{- end }}
securityContext:
  {{- include "chat-management.podSecurityContext" $root | nindent 2 }}
{{- if .serve }}
{{- /* preStop sleep, then uvicorn drains for drainSeconds; a few seconds spare before SIGKILL. */}}
terminationGracePeriodSeconds: {{ add (int $root.Values.preStopSleepSeconds) (int (ceil $root.Values.drainSeconds)) 5 }}
{{- end }}
{{- with $s.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
containers:
  - name: {{ .component }}
    image: {{ include "chat-management.image" $root }}
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args: {{ toJson .args }}
    {{- if .serve }}
    ports:
      - name: http
        containerPort: 8000
        protocol: TCP
    startupProbe:
      httpGet: {path: /healthz, port: http}
      periodSeconds: 2
      failureThreshold: 30
    livenessProbe:
      httpGet: {path: /healthz, port: http}
      periodSeconds: 10
      timeoutSeconds: 2
      failureThreshold: 3
    readinessProbe:
      httpGet: {path: /readyz, port: http}
      periodSeconds: 5
      timeoutSeconds: 3
      failureThreshold: 2
    lifecycle:
      preStop:
        exec:
          command: ["sleep", "{{ $root.Values.preStopSleepSeconds }}"]
    {{- end }}
    envFrom:
      {{- include "chat-management.envFrom" $root | nindent 6 }}
    env:
      {{- include "chat-management.env" (dict "root" $root "component" .component "env" $s.env) | nindent 6 }}
    {{- with $s.resources }}
    resources:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    securityContext:
      {{- include "chat-management.containerSecurityContext" $root | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
      {{- include "chat-management.secretFileMounts" $nameArgs | nindent 6 }}
volumes:
  # The root filesystem is read-only: /tmp is the scratch dir (libvips' spill files in the media processor).
  - name: tmp
    emptyDir:
      sizeLimit: {{ default "64Mi" $s.scratchSize }}
  {{- include "chat-management.secretFileVolumes" $nameArgs | nindent 2 }}
{{- with $s.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $s.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if and .serve $s.topologySpread $s.topologySpread.enabled }}
topologySpreadConstraints:
  {{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: {{ $s.topologySpread.maxSkew }}
    topologyKey: {{ $key }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "chat-management.selectorLabels" $nameArgs | nindent 8 }}
  {{- end }}
{{- end }}
{{- end -}}

{{- define "chat-management.serviceAccountName" -}}
{{- if .root.Values.serviceAccount.create -}}
{{- include "chat-management.componentName" . -}}
{{- else -}}
default
{{- end -}}
{{- end -}}
