package realnode

import "fmt"

// Test workloads, applied with kubectl as YAML, the way a user writes them.

// webManifest is the Deployment behind the Service under test: readiness probe, a preStop
// hook (the pod keeps serving while the proxies take it out), and a drain after SIGTERM
// during which /healthz fails but connections are still served.
func webManifest(name string, replicas int, rev string) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: default}
spec:
  replicas: %[2]d
  selector: {matchLabels: {app: %[1]s}}
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata:
      labels: {app: %[1]s}
      annotations: {bench/rev: "%[3]s"}
    spec:
      terminationGracePeriodSeconds: 30
      topologySpreadConstraints:
        - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: %[1]s}}}
      containers:
        - name: web
          image: %[4]s
          imagePullPolicy: Never
          args: [serve, --http, ":8080", --tcp, ":9090", --udp, ":9091", --drain, "3s"]
          env:
            - name: POD_NAME
              valueFrom: {fieldRef: {fieldPath: metadata.name}}
          ports:
            - {name: http, containerPort: 8080}
            - {name: stream, containerPort: 9090}
            - {name: echo, containerPort: 9091, protocol: UDP}
          readinessProbe:
            httpGet: {path: /healthz, port: 8080}
            periodSeconds: 1
            failureThreshold: 1
          lifecycle:
            preStop:
              exec: {command: [/workload, sleep, "5"]}
`, name, replicas, rev, WorkloadImage)
}

// serviceManifest is a NodePort Service over the web Deployment: HTTP, the TCP stream and
// UDP echo.
func serviceManifest(name string, nodePort int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: default}
spec:
  type: NodePort
  selector: {app: %[1]s}
  ports:
    - {name: http, port: 80, targetPort: 8080, nodePort: %[2]d}
    - {name: stream, port: 9090, targetPort: 9090}
    - {name: echo, port: 9091, targetPort: 9091, protocol: UDP}
`, name, nodePort)
}

// localServiceManifest is a LoadBalancer Service with externalTrafficPolicy Local over the
// web pods: kube-apiserver allocates its healthCheckNodePort, which every node's proxy serves.
func localServiceManifest(name, app string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: default}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: %[2]s}
  ports:
    - {name: http, port: 80, targetPort: 8080}
`, name, app)
}

// clientPodManifest is a workload client pinned to node: the bench starts load runs in it
// through its control API on port 9000.
func clientPodManifest(name, node string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: default, labels: {role: client}}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: %[3]s
      imagePullPolicy: Never
      args: [client, --listen, ":9000"]
      readinessProbe:
        httpGet: {path: /healthz, port: 9000}
        periodSeconds: 1
`, name, node, WorkloadImage)
}

// hostPortPodManifest is a server pod publishing port 8080 as hostPort on its node.
func hostPortPodManifest(name, node string, hostPort int) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %[1]s, namespace: default, labels: {role: hostport}}
spec:
  nodeName: %[2]s
  terminationGracePeriodSeconds: 1
  containers:
    - name: web
      image: %[3]s
      imagePullPolicy: Never
      args: [serve, --http, ":8080", --tcp, ":9090", --udp, ":9091"]
      env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
      ports:
        - {containerPort: 8080, hostPort: %[4]d}
      readinessProbe:
        httpGet: {path: /healthz, port: 8080}
        periodSeconds: 1
`, name, node, WorkloadImage, hostPort)
}
