{{/* Names, labels and the operator's RBAC rules, shared by the templates. */}}

{{- define "unison-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "unison-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "unison-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "unison-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "unison-operator.labels" -}}
{{ include "unison-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: unison
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "unison-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "unison-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "unison-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The namespace whose UnisonClusters are reconciled when not watching all of them. */}}
{{- define "unison-operator.watchNamespace" -}}
{{- default .Release.Namespace .Values.watch.namespace -}}
{{- end -}}

{{/*
What the operator does inside the namespaces it watches: exactly the calls of
operator/unison_operator (handlers.py, kube.py) and of kopf underneath it.
*/}}
{{- define "unison-operator.namespacedRules" -}}
# kopf: list+watch UnisonClusters and patch its bookkeeping annotations; the status
# writer reads the cluster (get) and merge-patches status.
- apiGroups: ["unisondb.io"]
  resources: ["unisonclusters"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["unisondb.io"]
  resources: ["unisonclusters/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion, which clusters enforcing
# OwnerReferencesPermissionEnforcement allow only with update on the owner's finalizers.
- apiGroups: ["unisondb.io"]
  resources: ["unisonclusters/finalizers"]
  verbs: ["update"]
# The children: read, server-side apply (PATCH), create where apply cannot, and
# list+watch so that a deleted or edited child is repaired at once; readiness flows up
# from the StatefulSets' and Deployments' events.
- apiGroups: [""]
  resources: ["configmaps", "services"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# A StatefulSet whose volumeClaimTemplates change is deleted (orphaning its pods) and
# created again.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The cluster's TLS Secret (<name>-tls: its CA and node certificates): read at each
# reconcile, written with server-side apply. Not listed or watched: the resync repairs it.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# Growing the data volumes when spec storage grows.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "patch"]
# kopf.event(): Events on the UnisonCluster.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end -}}
