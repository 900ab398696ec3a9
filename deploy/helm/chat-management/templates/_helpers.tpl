{{/* Names ---------------------------------------------------------------------------------------- */}}
{{- define "chat-management.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chat-management.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one component's objects: (dict "root" $ "component" "upload") */}}
{{- define "chat-management.componentName" -}}
{{- printf "%s-%s" (include "chat-management.fullname" .root) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chat-management.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels ------------------------------------------------------------------------------------------ */}}
{{- define "chat-management.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat-management.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* (dict "root" $ "component" "upload") */}}
{{- define "chat-management.labels" -}}
helm.sh/chart: {{ include "chat-management.chart" .root }}
{{ include "chat-management.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: chat-management
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Image ------------------------------------------------------------------------------------------- */}}
{{- define "chat-management.image" -}}
{{- $image := .Values.image -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* A service's settings: podDefaults overlaid with the service's own keys.
     (dict "root" $ "spec" $serviceValues) */}}
{{- define "chat-management.podSettings" -}}
{{- $merged := mergeOverwrite (deepCopy .root.Values.podDefaults) (deepCopy .spec) -}}
{{- toYaml $merged -}}
{{- end -}}

{{/* Fail rendering early on a configuration the services would refuse at start-up. */}}
{{- define "chat-management.validate" -}}
{{- $config := .Values.config -}}
{{- if and (eq (toString (default "local" $config.OBJECT_STORE)) "s3") (not (or $config.S3_BUCKET_NAME .Values.testing.enabled)) -}}
{{- fail "config.S3_BUCKET_NAME is required with config.OBJECT_STORE=s3" -}}
{{- end -}}
{{- if not (or $config.AUTH_JWKS_URL (hasKey .Values.secretEnv "AUTH_JWT_SECRET") .Values.testing.enabled .Values.envFrom) -}}
{{- fail "set config.AUTH_JWKS_URL (with AUTH_ISSUER and AUTH_AUDIENCE), or secretEnv.AUTH_JWT_SECRET" -}}
{{- end -}}
{{- /* The services' own defaults (redis://127.0.0.1, chat-management-dev) are a laptop's: a release
     without these would start and never get ready. The test profile brings its own backends. */ -}}
{{- if not (or .Values.testing.enabled .Values.envFrom) -}}
{{- if and (or (eq (toString $config.EVENT_BUS) "redis") (eq (toString $config.LIMIT_STORE) "redis")) (not (hasKey .Values.secretEnv "REDIS_URL")) -}}
{{- $_ := required "config.REDIS_URL is required: the Redis every service shares (redis://host:6379/0, rediss:// for TLS; with EVENT_BUS or LIMIT_STORE redis)" $config.REDIS_URL -}}
{{- end -}}
{{- if and (eq (toString $config.MESSAGE_STORE) "firestore") (not (hasKey .Values.secretEnv "FIRESTORE_PROJECT_ID")) -}}
{{- $_ := required "config.FIRESTORE_PROJECT_ID is required: the Google Cloud project of the Firestore database (with MESSAGE_STORE firestore)" $config.FIRESTORE_PROJECT_ID -}}
{{- end -}}
{{- end -}}
{{- range $name, $_ := .Values.secretEnv -}}
{{- if hasKey $config $name -}}
{{- fail (printf "%s is set in both config and secretEnv: keep it in one place" $name) -}}
{{- end -}}
{{- end -}}
{{- /* A setting that names a file must name a mounted one: otherwise the pod crash-loops. */ -}}
{{- range $name, $value := $config -}}
{{- if and $value (or (hasSuffix "_FILE" $name) (eq $name "GOOGLE_APPLICATION_CREDENTIALS")) -}}
{{- $mounted := false -}}
{{- range $_, $files := $.Values.secretFiles -}}
{{- if hasPrefix (printf "%s/" (trimSuffix "/" $files.mountPath)) (toString $value) -}}
{{- $mounted = true -}}
{{- end -}}
{{- end -}}
{{- if not $mounted -}}
{{- fail (printf "config.%s names %s, which no secretFiles entry mounts: add one (or set it through secretFiles.<name>.env)" $name (toString $value)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $key, $files := .Values.secretFiles -}}
{{- range $name, $_ := $files.env -}}
{{- if or (hasKey $config $name) (hasKey $.Values.secretEnv $name) -}}
{{- fail (printf "%s is set by secretFiles.%s.env and elsewhere: keep it in one place" $name $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $component, $spec := .Values.services -}}
{{- if and $spec.enabled $spec.keda $spec.keda.enabled (not $spec.keda.queueURL) -}}
{{- fail (printf "services.%s.keda.queueURL: the SQS queue the scaler watches" $component) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.httpRoute.enabled (eq .Values.httpRoute.controller "gke") -}}
{{- $uploadOnMessage := false -}}
{{- with .Values.services.message -}}
{{- if and .enabled (has "upload" (default list .alsoServe)) -}}{{- $uploadOnMessage = true -}}{{- end -}}
{{- end -}}
{{- if not $uploadOnMessage -}}
{{- fail "httpRoute.controller=gke: GKE's Gateway has no regex path match, so the upload path (under /conversations) reaches message pods: set services.message.alsoServe: [upload]" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Volumes and mounts of the secretFiles one component gets: (dict "root" $ "component" "upload") */}}
{{- define "chat-management.secretFileVolumes" -}}
{{- range $key, $files := .root.Values.secretFiles }}
{{- if or (not $files.services) (has $.component $files.services) }}
- name: secret-{{ $key }}
  secret:
    secretName: {{ $files.secretName }}
    defaultMode: 0440
    {{- with $files.items }}
    items:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "chat-management.secretFileMounts" -}}
{{- range $key, $files := .root.Values.secretFiles }}
{{- if or (not $files.services) (has $.component $files.services) }}
- name: secret-{{ $key }}
  mountPath: {{ $files.mountPath }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}

{{/* The cleanup job and the smoke test are pods of the same image; they share this environment. */}}
{{- define "chat-management.env" -}}
{{- $root := .root -}}
- name: PORT
  value: "8000"
- name: SHUTDOWN_DRAIN_SECONDS
  value: {{ $root.Values.drainSeconds | quote }}
- name: DATA_DIR
  value: /tmp/chat-data
{{- if not (hasKey $root.Values.config "OTEL_SERVICE_NAME") }}
- name: OTEL_SERVICE_NAME
  value: {{ .component | quote }}
{{- end }}
{{- if $root.Values.testing.enabled }}
{{- include "chat-management.testingEnv" $root }}
{{- end }}
{{- range $name, $ref := $root.Values.secretEnv }}
{{- if or (not $ref.services) (has $.component $ref.services) }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
{{- end }}
{{- end }}
{{- range $_, $files := $root.Values.secretFiles }}
{{- if or (not $files.services) (has $.component $files.services) }}
{{- range $name, $file := $files.env }}
- name: {{ $name }}
  value: {{ printf "%s/%s" (trimSuffix "/" $files.mountPath) $file | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- range $name, $value := .env }}
- name: {{ $name }}
  value: {{ include "chat-management.envValue" $value | quote }}
{{- end }}
{{- end -}}

{{- define "chat-management.envFrom" -}}
- configMapRef:
    name: {{ include "chat-management.fullname" . }}-config
{{- with .Values.envFrom }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Restricted Pod Security Standard, for every pod running the chat-management image. */}}
{{- define "chat-management.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "chat-management.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Address of a public service for the ingress/route backends: (dict "root" $ "component" "upload") */}}
{{- define "chat-management.requireService" -}}
{{- $spec := get .root.Values.services .component -}}
{{- if not (and $spec $spec.enabled) -}}
{{- fail (printf "the %s service is routed to, so services.%s.enabled must be true" .component .component) -}}
{{- end -}}
{{- include "chat-management.componentName" . -}}
{{- end -}}

{{/* NetworkPolicy egress from named rules: (dict "root" $ "names" (list "dns" "cloud") "owner" "services.upload") */}}
{{- define "chat-management.egress" -}}
{{- $rules := .root.Values.networkPolicy.egressRules -}}
{{- $names := uniq (concat (default list .names) (default list .root.Values.networkPolicy.egressForAll)) -}}
egress:
{{- range $ruleName := $names }}
{{- $rule := get $rules $ruleName }}
{{- if not $rule }}
{{- fail (printf "%s.egressTo names %q, which networkPolicy.egressRules does not define" $.owner $ruleName) }}
{{- end }}
  # {{ $ruleName }}
  {{- toYaml (list $rule) | nindent 2 }}
{{- end }}
{{- if not $names }} []{{ end }}
{{- end -}}

{{/* The public routes, for the Ingress and the HTTPRoute alike, from files/routes.yaml (the table
     `make dev`'s gateway reads too; its header says what each key means). A route to an `optional`
     service joins when that service is enabled; `devOnly` routes never do. `gateway: false` leaves a
     RegularExpression match out of GKE's HTTPRoute (GKE's Gateway has none). */}}
{{- define "chat-management.routes" -}}
{{- $gke := eq (toString .Values.httpRoute.controller) "gke" }}
{{- $routes := list }}
{{- range $route := .Files.Get "files/routes.yaml" | fromYamlArray }}
{{- $spec := get $.Values.services $route.component }}
{{- $enabled := and $spec $spec.enabled }}
{{- if and (not $route.devOnly) (or $enabled (not $route.optional)) }}
{{- $regex := eq $route.match.type "RegularExpression" }}
{{- $routes = append $routes (set (deepCopy $route) "gateway" (not (and $gke $regex))) }}
{{- end }}
{{- end }}
{{- toYaml $routes }}
{{- end -}}

{{/* testing.enabled: the services talk to the in-cluster Redis, LocalStack and Firestore emulator. */}}
{{- define "chat-management.testingEnv" -}}
{{- $fullname := include "chat-management.fullname" . }}
- name: AWS_ENDPOINT_URL
  value: http://{{ $fullname }}-localstack:4566
- name: S3_PUBLIC_ENDPOINT_URL
  value: http://{{ $fullname }}-localstack:4566
- name: AWS_REGION
  value: us-east-1
# LocalStack's fixed test credentials; real AWS is never reached from the test profile.
- name: AWS_ACCESS_KEY_ID
  value: test
- name: AWS_SECRET_ACCESS_KEY
  value: test
- name: S3_BUCKET_NAME
  value: {{ .Values.testing.bucket | quote }}
- name: FIRESTORE_EMULATOR_HOST
  value: {{ $fullname }}-firestore:8080
- name: FIRESTORE_PROJECT_ID
  value: {{ .Values.testing.firestoreProject | quote }}
- name: REDIS_URL
  value: redis://{{ $fullname }}-redis:6379/0
{{- if not (hasKey .Values.secretEnv "AUTH_JWT_SECRET") }}
- name: AUTH_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $fullname }}-test-auth
      key: jwt-secret
{{- end }}
{{- end -}}

{{/* An environment value as the services read it: YAML numbers reach templates as float64, and
     20971520 must not become "2.097152e+07". */}}
{{- define "chat-management.envValue" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) -}}
{{- printf "%.0f" . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}
