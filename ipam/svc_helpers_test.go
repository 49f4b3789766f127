package ipam

import "github.com/svcproxy/svcproxy/proxy/model"

func svcKey(name string) model.ServiceKey { return model.ServiceKey{Namespace: "default", Name: name} }

func portKey(svc, port string) model.PortKey {
	return model.PortKey{Service: svcKey(svc), Port: port, Protocol: model.TCP}
}
