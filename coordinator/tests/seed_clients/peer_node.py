# network/peer_node.py
import asyncio
import websockets
import json
import psutil
import uuid

class PeerNode:
    def __init__(self, peer_id, coordinator_url='ws://localhost:8765'):
        self.peer_id = peer_id
        self.coordinator_url = coordinator_url
        self.websocket = None
    
    def detect_capabilities(self):
        """Auto-detect system capabilities"""
        return {
            'cpu_cores': psutil.cpu_count(),
            'ram_gb': round(psutil.virtual_memory().total / (1024**3), 2),
            'gpu': False  # TODO: Add GPU detection
        }
    
    async def connect(self):
        """Connect to coordinator"""
        self.websocket = await websockets.connect(self.coordinator_url)
        
        # Register
        await self.websocket.send(json.dumps({
            'msg_type': 'register_peer',
            'peer_id': self.peer_id,
            'capabilities': self.detect_capabilities()
        }))
        
        # Wait for ack
        response = json.loads(await self.websocket.recv())
        print(f"Registration: {response}")
    
    async def execute_task(self, task_data):
        """Execute a task"""
        task_type = task_data.get('task_type')
        
        # Route to appropriate handler
        if task_type == 'physics':
            return await self.execute_physics(task_data)
        elif task_type == 'ai':
            return await self.execute_ai(task_data)
        else:
            return {'status': 'error', 'message': f'Unknown task type: {task_type}'}
    
    async def execute_physics(self, task_data):
        """Dummy physics implementation"""
        await asyncio.sleep(0.1)  # Simulate work
        return {'status': 'success', 'data': 'physics_processed'}
    
    async def run(self):
        """Main peer loop"""
        await self.connect()
        
        # Start heartbeat task
        heartbeat_task = asyncio.create_task(self.send_heartbeats())
        
        # Listen for tasks
        async for message in self.websocket:
            data = json.loads(message)
            
            if data['msg_type'] == 'task_assignment':
                task_id = data['task_id']
                print(f"Received task: {task_id}")
                
                # Execute
                result = await self.execute_task(data.get('task_data', {}))
                
                # Return result
                await self.websocket.send(json.dumps({
                    'msg_type': 'task_result',
                    'task_id': task_id,
                    'result': result
                }))
    
    async def send_heartbeats(self):
        """Send periodic heartbeats"""
        while True:
            await asyncio.sleep(5)
            await self.websocket.send(json.dumps({
                'msg_type': 'heartbeat',
                'peer_id': self.peer_id
            }))

if __name__ == '__main__':
    import sys
    peer_id = sys.argv[1] if len(sys.argv) > 1 else f'peer_{uuid.uuid4().hex[:8]}'
    peer = PeerNode(peer_id)
    asyncio.run(peer.run())
